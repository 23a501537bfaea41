"""The offline demo: it must find exactly the discrepancies it injects, and leave a warehouse behind; and
nothing the product writes holds a secret or a payer's openid outside the evidence (one demo run, shared)."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.demo import INJECTED, AlertInbox, prepare, run_demo

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    said: list[str] = []
    data = tmp_path_factory.mktemp("demo") / "var"
    result = run_demo(data, say=lambda *a, **k: said.append(" ".join(map(str, a))))
    result.said = said
    return result


def test_the_demo_finds_exactly_what_it_injects(demo):
    assert {e["class"] for e in demo.exceptions} == INJECTED
    assert demo.as_injected
    assert demo.outcome.alert_sent
    assert len(demo.alerts) == 2  # the run's, then the re-run's after one exception was resolved
    message = demo.alerts[0]["message"]
    for cls in INJECTED:
        assert cls in message
    # the demo ends by resolving the amount mismatch through the workbench; the re-run's alert counts one fewer
    assert demo.resolved["class"] == "amount_mismatch"
    assert (demo.outcome.exceptions, demo.rerun.exceptions) == (4, 3)
    assert "4 exceptions" in demo.alerts[0]["title"]
    assert "3 exceptions" in demo.alerts[1]["title"]
    assert "amount_mismatch" not in demo.alerts[1]["message"]
    assert "Open backlog: 3 exception(s)" in demo.alerts[1]["message"]
    con = duckdb.connect(str(demo.data_dir / "warehouse.duckdb"), read_only=True)
    try:
        audit = con.execute(
            "select action, actor, resolution, class from marts.mart_exception_audit where action = 'resolved'"
        ).fetchall()
        assert audit == [("resolved", "demo", "explained", "amount_mismatch")]
        assert con.execute(
            "select work_state from marts.mart_exceptions where exception_id = ?", [demo.resolved["exception_id"]]
        ).fetchone() == ("resolved",)
    finally:
        con.close()
    assert any((demo.data_dir / "archive").rglob("*.csv.gz"))
    assert any((demo.data_dir / "notifications").rglob("*.jsonl"))


def test_the_evidence_has_restrictive_modes(demo):
    archive = [demo.data_dir / "archive", *(demo.data_dir / "archive").rglob("*")]
    log = [p for p in (demo.data_dir / "notifications").rglob("*") if p.name != ".lock"]

    def modes(paths, directories):
        return {oct(p.stat().st_mode & 0o777) for p in paths if p.is_dir() == directories}

    assert (modes(archive, True), modes(archive, False)) == ({"0o700"}, {"0o600"})
    assert (modes(log, True), modes(log, False)) == ({"0o750"}, {"0o640"})


def test_the_demo_never_wipes_a_folder_it_did_not_create(tmp_path):
    (tmp_path / "precious.txt").write_text("real data")
    with pytest.raises(FileExistsError, match="did not write"):
        prepare(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "real data"


# --- secrets and personal data, counted ------------------------------------------------------------------------


def config_of(data: Path, credentials: Path, api: str, alert_url: str) -> Path:
    """A wxrecon.toml for the demo's merchants (their exported credentials), WeChat Pay at ``api``."""
    lines = [f'api_base_url = "{api}"', f'data_dir = "{data}"', "bill_retry_seconds = 0.05"]
    lines += ["bill_ready_deadline_hours = 0.0001", f'alerts = {{ urls = ["{alert_url}"] }}']
    lines += [f'local_orders = {{ kind = "parquet", paths = ["{data / "local" / "orders.parquet"}"] }}']
    for n, folder in enumerate(sorted(credentials.iterdir())):
        meta = json.loads((folder / "merchant.json").read_text())
        lines += [
            "[[merchants]]",
            *(f'{key} = "{meta[key]}"' for key in ("mchid", "appid", "merchant_serial_no", "wechatpay_public_key_id")),
            f'private_key_file = "{folder / "apiclient_key.pem"}"',
            f'api_v3_key_file = "{folder / "apiv3_key.txt"}"',
            f'wechatpay_public_key_file = "{folder / "wechatpay_public_key.pem"}"',
            f"receives_notifications = {'true' if n == 0 else 'false'}",
        ]
    path = data.parent / "wxrecon.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def needles(data: Path) -> dict[str, set[str]]:
    """What must not leak: the APIv3 keys, private-key material (PEM markers and body lines), payer openids
    (read from the archived bills' 用户标识 column)."""
    credentials = data / "demo-credentials"
    keys = {(folder / "apiv3_key.txt").read_text().strip() for folder in credentials.iterdir()}
    pem = set()
    for folder in credentials.iterdir():
        body = (folder / "apiclient_key.pem").read_text().splitlines()
        pem |= {line for line in body[1:-1] if len(line) >= 40}
    pem.add("PRIVATE KEY-----")
    openids = set()
    for bill in (data / "archive").rglob("*.csv.gz"):
        lines = gzip.decompress(bill.read_bytes()).decode("utf-8-sig").splitlines()
        column = lines[0].split(",").index("用户标识")
        openids |= {line.split(",`")[column].strip("`") for line in lines[1:-2] if line.startswith("`")}
    openids.discard("")
    return {"APIv3 key": keys, "private key": pem, "openid": openids}


def warehouse_text(path: Path) -> str:
    """Every table of the warehouse, every row, as text."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = con.execute("select schema_name, table_name from duckdb_tables() order by all").fetchall()
        return "\n".join(f"{s}.{t}: {con.execute(f'select * from {s}.{t}').fetchall()!r}" for s, t in tables)  # noqa: S608
    finally:
        con.close()


def prefect_text() -> str:
    """The Prefect server's logs and artifacts (every run of this session)."""
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all()
    with get_client(sync_client=True) as client:
        logs = client.read_logs()
        artifacts = client.read_artifacts()
    return "\n".join([*(log.message for log in logs), *(str(a.data) for a in artifacts)])


EVIDENCE = ("notifications", "archive", "demo-credentials")
"""Where secrets and openids may be: the raw notification log and bill archive (evidence), the credential files."""


def place_of(path: Path, data: Path) -> str:
    relative = path.relative_to(data)
    top = relative.parts[0]
    if top == "archive" and path.name.endswith((".csv.gz", ".csv")):
        return "archive (bills)"
    if top == "archive":
        return "archive (metadata)"
    return top if top in EVIDENCE else str(relative)


def test_no_secret_and_no_openid_outside_the_evidence(demo, tmp_path):
    data = demo.data_dir
    found = needles(data)
    assert all(found.values()), {kind: len(values) for kind, values in found.items()}

    # a failing day: WeChat Pay unreachable, every bill fetched again (errors, an alert, the CLI's output)
    inbox = AlertInbox()
    try:
        config = config_of(data, data / "demo-credentials", "http://127.0.0.1:9", inbox.apprise_url)
        failing = CliRunner().invoke(app, ["run", "--date", str(demo.bill_date), "--refetch", "--config", str(config)])
        report = CliRunner().invoke(app, ["report", "--date", str(demo.bill_date), "--config", str(config)])
    finally:
        inbox.close()
    assert failing.exit_code == 7, failing.output  # unavailable
    assert [a["title"].split(":")[0] for a in inbox.received] == ["UNAVAILABLE"]  # the failing day's alert
    assert report.exit_code == 1, report.output

    texts: dict[str, list[str]] = {
        "warehouse tables": [warehouse_text(data / "warehouse.duckdb")],
        "Prefect logs and artifacts": [prefect_text()],
        "alert bodies": [json.dumps(a, ensure_ascii=False) for a in demo.alerts + inbox.received],
        "CLI output": [failing.output, report.output, "\n".join(demo.said)],
    }
    for path in sorted(p for p in data.rglob("*") if p.is_file() and p.suffix != ".duckdb"):
        raw = path.read_bytes()
        text = gzip.decompress(raw).decode("utf-8", "replace") if raw[:2] == b"\x1f\x8b" else raw.decode("latin-1")
        texts.setdefault(place_of(path, data), []).append(text)

    counts: Counter = Counter()
    for place, contents in texts.items():
        for kind, values in found.items():
            counts[place, kind] += sum(content.count(value) for content in contents for value in values)
    for (place, kind), n in sorted(counts.items()):
        print(f"secrets scan: {place:28} {kind:12} {n}")
    leaks = {key: n for key, n in counts.items() if n and key[0] not in (*EVIDENCE, "archive (bills)")}
    assert leaks == {}
    assert counts["archive (bills)", "openid"] > 0  # the evidence is where it should be
    assert sum(n for (place, kind), n in counts.items() if kind == "openid") == counts["archive (bills)", "openid"]
    assert re.search(r"unavailable", failing.output, re.I)
