"""Real PostgreSQL and MariaDB servers for the test session (pytest plugin).

Register with ``pytest_plugins = ["tests.dbservers"]`` in ``tests/conftest.py``. Two session-scoped fixtures:

``postgres_server``
    ``initdb`` into a fresh temp dir (as the ``postgres`` OS user when we run as root, since initdb and
    postgres refuse root), then ``pg_ctl start`` on 127.0.0.1, a free port and a private socket dir; trust auth,
    fsync off. A database ``recon`` is created.
``mariadb_server``
    ``mariadb-install-db`` into a private datadir, then ``mariadbd`` on 127.0.0.1, a free port and a private socket;
    user ``root`` with a password over TCP, ``local_infile`` on, utf8mb4, durability off. A database ``recon``
    is created.

Each yields a :class:`PostgresServer` / :class:`MariaDBServer` whose ``url`` is a connectorx-style URL for the
``recon`` database, with ``execute()`` (one statement, autocommit, returns the rows), ``load_rows()`` (bulk load:
``COPY ... FROM STDIN`` for PostgreSQL, ``LOAD DATA LOCAL INFILE`` for MariaDB, which also fails on any load
warning), ``connect()`` (a new driver connection) and ``create_database(name)`` (a handle on a fresh database of the
same server, for isolation between test modules). Servers stop (and their directories are removed) at the end of
the session.

A missing binary FAILS the fixture with the install command; it never skips. Fresh Debian 12 needs::

    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql-15 mariadb-server

(PostgreSQL 15 binaries live in /usr/lib/postgresql/15/bin; they are found there even if not on PATH.)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from psycopg import sql as pgsql

PG_INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH nor in /usr/lib/postgresql/*/bin. "
    "Install them with: apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql-15"
)
MARIADB_INSTALL_HINT = (
    "MariaDB server binaries (mariadbd, mariadb-install-db) were not found on PATH nor in /usr/sbin, /usr/bin. "
    "Install them with: apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y mariadb-server"
)
START_TIMEOUT_S = 30.0
MARIADB_PASSWORD = "recon-test"


class ServerStartError(RuntimeError):
    """A database server could not be installed or started; the message carries the command and its log."""


# -- helpers ----------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: Sequence[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ServerStartError(
            f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError as exc:
        return f"<no log at {path}: {exc}>"


def _find_binary(name: str, extra_globs: Sequence[str]) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted((p for pattern in extra_globs for p in glob.glob(pattern)), reverse=True)
    return next((p for p in candidates if os.access(p, os.X_OK)), None)


def _is_root() -> bool:
    return os.geteuid() == 0


# -- PostgreSQL -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresServer:
    """A running PostgreSQL server (trust auth, loopback only) and one of its databases."""

    host: str
    port: int
    user: str
    dbname: str
    socket_dir: Path
    data_dir: Path

    @property
    def url(self) -> str:
        """connectorx / libpq URL of this database."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(host=self.host, port=self.port, user=self.user, dbname=self.dbname, autocommit=True)

    def execute(self, statement: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run SQL (several statements allowed when there are no params) and return the last result's rows."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(statement, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def load_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
        """Bulk load rows with ``COPY table (columns) FROM STDIN``; ``table`` may be ``schema.table``."""
        statement = pgsql.SQL("COPY {} ({}) FROM STDIN").format(
            pgsql.Identifier(*table.split(".")), pgsql.SQL(", ").join(map(pgsql.Identifier, columns))
        )
        count = 0
        with self.connect() as conn, conn.cursor() as cur, cur.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
                count += 1
        return count

    def create_database(self, name: str) -> PostgresServer:
        """Create a fresh database (dropped first if it exists) and return a handle on it."""
        admin = replace(self, dbname="postgres")
        admin.execute(pgsql.SQL("DROP DATABASE IF EXISTS {}").format(pgsql.Identifier(name)).as_string())
        admin.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)).as_string())
        return replace(self, dbname=name)


def _postgres_binaries() -> tuple[str, str]:
    initdb = _find_binary("initdb", ["/usr/lib/postgresql/*/bin/initdb"])
    if initdb is None:
        raise ServerStartError(PG_INSTALL_HINT)
    pg_ctl = Path(initdb).resolve().parent / "pg_ctl"
    if not os.access(pg_ctl, os.X_OK):
        found = _find_binary("pg_ctl", ["/usr/lib/postgresql/*/bin/pg_ctl"])
        if found is None:
            raise ServerStartError(PG_INSTALL_HINT)
        pg_ctl = Path(found)
    return initdb, str(pg_ctl)


def _postgres_os_user() -> pwd.struct_passwd | None:
    """initdb, pg_ctl and postgres refuse to run as root: then they run as the ``postgres`` OS user."""
    if not _is_root():
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as exc:
        raise ServerStartError(
            "running as root, PostgreSQL must run as another OS user but 'postgres' does not exist; "
            "installing postgresql-15 creates it (or: useradd --system --home /var/lib/postgresql postgres)"
        ) from exc


def _as_user(user: pwd.struct_passwd | None, cmd: list[str]) -> list[str]:
    return cmd if user is None else ["runuser", "-u", user.pw_name, "--", *cmd]


@contextlib.contextmanager
def run_postgres() -> Iterator[PostgresServer]:
    """Start a throwaway PostgreSQL server; stop it and delete its files on exit."""
    initdb, pg_ctl = _postgres_binaries()
    user = _postgres_os_user()
    base = Path(tempfile.mkdtemp(prefix="recon-pg-"))
    data, sock, log = base / "data", base / "sock", base / "postgres.log"
    started = False
    try:
        sock.mkdir()
        log.touch()
        if user is not None:
            for path in (base, sock, log):
                os.chown(path, user.pw_uid, user.pw_gid)
        initdb_args = ["-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"]
        _run(
            _as_user(user, [initdb, *initdb_args]),
            "initdb" if user is None else f"initdb as OS user {user.pw_name} (who must be able to reach {base})",
        )
        for _attempt in range(3):
            port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c timezone=UTC"
            )
            cmd = [pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", str(int(START_TIMEOUT_S))]
            proc = subprocess.run(_as_user(user, [*cmd, "start"]), capture_output=True, text=True, check=False)
            if proc.returncode == 0:
                started = True
                break
            if "already in use" not in _tail(log):
                break
        if not started:
            raise ServerStartError(f"pg_ctl start failed: {proc.stdout}{proc.stderr}\nlog {log}:\n{_tail(log)}")
        server = PostgresServer(
            host="127.0.0.1", port=port, user="postgres", dbname="postgres", socket_dir=sock, data_dir=data
        )
        yield server.create_database("recon")
    finally:
        if started:
            subprocess.run(
                _as_user(user, [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                check=False,
            )
        shutil.rmtree(base, ignore_errors=True)


# -- MariaDB ----------------------------------------------------------------------------------------------------


def _mysql_text(value: Any) -> str:
    r"""One field of a LOAD DATA file (tab separated, backslash escaped, ``\N`` for NULL)."""
    if value is None:
        return r"\N"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            raise ValueError(f"MariaDB DATETIME/TIMESTAMP values are naive; got an aware datetime {value!r}")
        return value.isoformat(sep=" ")
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, int | float | dt.date | dt.time):
        return str(value)
    if isinstance(value, str):
        return (
            value.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
            .replace("\0", "\\0")
        )
    raise TypeError(f"cannot load a {type(value).__name__} into MariaDB: {value!r}")


def _mysql_ident(name: str) -> str:
    return ".".join("`" + part.replace("`", "``") + "`" for part in name.split("."))


@dataclass(frozen=True)
class MariaDBServer:
    """A running MariaDB server (loopback only) and one of its databases; ``user``/``password`` work over TCP."""

    host: str
    port: int
    user: str
    password: str
    dbname: str
    socket_path: Path
    data_dir: Path

    @property
    def url(self) -> str:
        """connectorx URL of this database."""
        return f"mysql://{self.user}:{self.password}@{self.host}:{self.port}/{self.dbname}"

    def connect(self) -> pymysql.connections.Connection:
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=self.dbname,
            charset="utf8mb4",
            autocommit=True,
            local_infile=True,
        )

    def execute(self, statement: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one SQL statement (pymysql ``%s`` params) and return its rows."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(statement, params)
            return list(cur.fetchall()) if cur.description else []

    def load_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
        """Bulk load with ``LOAD DATA LOCAL INFILE``; any load warning (truncation, bad value) raises."""
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".tsv", newline="\n", delete=False) as fh:
            count = 0
            for row in rows:
                fh.write("\t".join(_mysql_text(v) for v in row) + "\n")
                count += 1
            path = fh.name
        try:
            statement = (
                f"LOAD DATA LOCAL INFILE %s INTO TABLE {_mysql_ident(table)} CHARACTER SET utf8mb4 "
                r"FIELDS TERMINATED BY '\t' ESCAPED BY '\\' LINES TERMINATED BY '\n' "
                f"({', '.join(_mysql_ident(c) for c in columns)})"
            )
            with self.connect() as conn, conn.cursor() as cur:
                loaded = cur.execute(statement, (path,))
                cur.execute("SHOW WARNINGS LIMIT 5")
                warnings = cur.fetchall()
            if warnings or loaded != count:
                raise ValueError(f"LOAD DATA into {table}: {loaded} of {count} rows loaded, warnings: {warnings}")
            return count
        finally:
            os.unlink(path)

    def create_database(self, name: str) -> MariaDBServer:
        """Create a fresh utf8mb4 database (dropped first if it exists) and return a handle on it."""
        self.execute(f"DROP DATABASE IF EXISTS {_mysql_ident(name)}")
        self.execute(f"CREATE DATABASE {_mysql_ident(name)} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        return replace(self, dbname=name)


def _mariadb_binaries() -> tuple[str, str]:
    mariadbd = _find_binary("mariadbd", ["/usr/sbin/mariadbd", "/usr/libexec/mariadbd"])
    install_db = _find_binary("mariadb-install-db", ["/usr/bin/mariadb-install-db", "/usr/scripts/mariadb-install-db"])
    if mariadbd is None or install_db is None:
        raise ServerStartError(MARIADB_INSTALL_HINT)
    return mariadbd, install_db


@contextlib.contextmanager
def run_mariadb() -> Iterator[MariaDBServer]:
    """Start a throwaway MariaDB server; stop it and delete its files on exit."""
    mariadbd, install_db = _mariadb_binaries()
    base = Path(tempfile.mkdtemp(prefix="recon-maria-"))
    data, tmp, sock, log = base / "data", base / "tmp", base / "mariadb.sock", base / "mariadb.err"
    tmp.mkdir()
    os_user = ["--user=root"] if _is_root() else []
    # Durability is irrelevant for a throwaway test server; small redo log makes install-db quick.
    common = ["--innodb-log-file-size=8M", "--innodb-buffer-pool-size=32M", "--innodb-flush-log-at-trx-commit=0"]
    proc: subprocess.Popen[bytes] | None = None
    try:
        _run(
            [
                install_db,
                "--no-defaults",
                f"--datadir={data}",
                *os_user,
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
                *common,
            ],
            "mariadb-install-db",
        )
        for _attempt in range(3):
            port = _free_port()
            cmd = [
                mariadbd,
                "--no-defaults",
                *os_user,
                f"--datadir={data}",
                f"--tmpdir={tmp}",
                f"--socket={sock}",
                f"--port={port}",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                f"--pid-file={base / 'mariadb.pid'}",
                f"--log-error={log}",
                "--local-infile=1",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_bin",
                "--default-time-zone=+00:00",
                "--innodb-doublewrite=0",
                "--skip-log-bin",
                *common,
            ]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                admin = _wait_for_mariadb(proc, sock, log)
                break
            except ServerStartError:
                if proc.poll() is None or "Address already in use" not in _tail(log):
                    raise
        else:
            raise ServerStartError(f"mariadbd found no free port in 3 attempts:\n{_tail(log)}")
        with admin, admin.cursor() as cur:
            cur.execute("CREATE OR REPLACE USER 'root'@'127.0.0.1' IDENTIFIED BY %s", (MARIADB_PASSWORD,))
            cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION")
        server = MariaDBServer(
            host="127.0.0.1",
            port=port,
            user="root",
            password=MARIADB_PASSWORD,
            dbname="mysql",
            socket_path=sock,
            data_dir=data,
        )
        yield server.create_database("recon")
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def _wait_for_mariadb(proc: subprocess.Popen[bytes], sock: Path, log: Path) -> pymysql.connections.Connection:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise ServerStartError(f"mariadbd exited with {proc.returncode}; log {log}:\n{_tail(log)}")
        if sock.exists():
            try:
                return pymysql.connect(unix_socket=str(sock), user="root", password="", autocommit=True)
            except pymysql.err.OperationalError:
                pass
        if time.monotonic() > deadline:
            raise ServerStartError(f"mariadbd did not accept connections within {START_TIMEOUT_S} s:\n{_tail(log)}")
        time.sleep(0.01)


# -- fixtures ---------------------------------------------------------------------------------------------------


def _start(stack: contextlib.ExitStack, run: Any) -> Any:
    """Enter ``run()`` or FAIL the requesting test with the reason (a missing binary names its apt package)."""
    try:
        return stack.enter_context(run())
    except ServerStartError as exc:
        reason = str(exc)
    pytest.fail(reason, pytrace=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the whole session; fails (never skips) when it cannot start."""
    with contextlib.ExitStack() as stack:
        yield _start(stack, run_postgres)


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    """A real MariaDB server for the whole session; fails (never skips) when it cannot start."""
    with contextlib.ExitStack() as stack:
        yield _start(stack, run_mariadb)
