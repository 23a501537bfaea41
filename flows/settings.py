"""Settings: the only place configuration and secrets are read.

Sources, strongest first: keyword arguments, environment variables (``WXRECON_...``, nested
with ``__``: ``WXRECON_ALERTS__MAX_COUNT=3``), then one TOML file (``--config``, else
``WXRECON_CONFIG``, else ``wxrecon.toml`` in the current directory when there is one).
``.env.example`` lists every setting with fake values.

Secrets (merchant private keys, APIv3 keys, alert URLs with tokens) are ``SecretStr``: they
never show in a repr, a log line or an error. A secret may also be given as
``prefect-secret:<block name>``: it is then read from that Prefect Secret block at start. Keys may also
be given as files (``private_key_file``; ``api_v3_key_file``, which is read and checked at start).
A missing or malformed setting fails at start with :class:`SettingsError` naming the setting
(as its TOML key and environment variable), never echoing its value.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from flows.notifications.limits import ReceiverLimits
from flows.sources import LocalOrdersSource, LocalRefundsSource
from flows.warehouse.lake import Lake
from wxpay import DEFAULT_BASE_URL, Client, Verifier
from wxpay.signing import load_private_key
from wxpay.verifying import PUBLIC_KEY_ID_PREFIX

ENV_PREFIX = "WXRECON_"
CONFIG_ENV = "WXRECON_CONFIG"
DEFAULT_CONFIG = Path("wxrecon.toml")
SECRET_BLOCK = "prefect-secret:"  # noqa: S105 - a prefix, not a password
APIV3_KEY_LENGTH = 32


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it and never shows a secret."""


def _resolve_secret(value: Any) -> Any:
    """``prefect-secret:<name>`` → the value of that Prefect Secret block; anything else unchanged."""
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if isinstance(text, str) and text.startswith(SECRET_BLOCK):
        from prefect.blocks.system import Secret  # only when a block is named: prefect is heavy to import

        name = text.removeprefix(SECRET_BLOCK).strip()
        try:
            return Secret.load(name).get()
        except Exception as exc:
            raise ValueError(f"Prefect Secret block {name!r} could not be read: {type(exc).__name__}") from None
    return value


def read_api_v3_key_file(path: Path) -> SecretStr:
    """The APIv3 key held in ``path`` (surrounding whitespace stripped); errors name the file, never its content."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ValueError(f"api_v3_key_file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"api_v3_key_file {path} cannot be read ({type(exc).__name__})") from None
    size = len(text.encode("utf-8"))
    if size != APIV3_KEY_LENGTH:
        raise ValueError(
            f"api_v3_key_file {path} must hold the APIv3 key of exactly {APIV3_KEY_LENGTH} characters"
            f" (it holds {size} bytes after stripping whitespace)"
        )
    return SecretStr(text)


class MerchantConfig(BaseModel):
    """One merchant id and its credentials."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mchid: str = Field(pattern=r"^[0-9]{6,32}$")
    appid: str = Field(min_length=1)
    merchant_serial_no: str = Field(pattern=r"^[0-9A-Fa-f]{8,64}$")
    private_key_file: Path | None = None
    private_key: SecretStr | None = None  # the PEM itself, e.g. from a Prefect Secret block
    api_v3_key: SecretStr | None = None
    api_v3_key_file: Path | None = None  # a file holding the key (surrounding whitespace is ignored)
    wechatpay_public_key_id: str | None = None
    wechatpay_public_key_file: Path | None = None
    platform_certificates: bool = False
    receives_notifications: bool = False  # a combine initiator: its notify_url receiver verifies callbacks
    contracted_fee_rate: str | None = Field(default=None, pattern=r"^[0-9]+(\.[0-9]+)?%$")
    _api_v3_key_read: SecretStr | None = PrivateAttr(default=None)  # what api_v3_key_file held at load

    @field_validator("private_key", "api_v3_key", mode="before")
    @classmethod
    def _secret_blocks(cls, value: Any) -> Any:
        return _resolve_secret(value)

    @field_validator("api_v3_key")
    @classmethod
    def _apiv3_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode("utf-8")) != APIV3_KEY_LENGTH:
            raise ValueError(f"the APIv3 key must be exactly {APIV3_KEY_LENGTH} characters")
        return value

    @field_validator("api_v3_key_file")
    @classmethod
    def _apiv3_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_api_v3_key_file(value)
        return value

    @model_validator(mode="after")
    def _complete(self) -> MerchantConfig:
        if (self.private_key_file is None) == (self.private_key is None):
            raise ValueError("give exactly one of private_key_file and private_key")
        if (self.api_v3_key_file is None) == (self.api_v3_key is None):
            raise ValueError("give exactly one of api_v3_key and api_v3_key_file")
        if self.api_v3_key_file is not None:
            self._api_v3_key_read = read_api_v3_key_file(self.api_v3_key_file)
        if self.private_key_file is not None and not self.private_key_file.is_file():
            raise ValueError(f"private_key_file {self.private_key_file} does not exist")
        if not self.platform_certificates:
            if not self.wechatpay_public_key_id or not self.wechatpay_public_key_file:
                raise ValueError(
                    "give wechatpay_public_key_id and wechatpay_public_key_file, or platform_certificates = true"
                )
            if not self.wechatpay_public_key_id.startswith(PUBLIC_KEY_ID_PREFIX):
                raise ValueError(f"wechatpay_public_key_id must start with {PUBLIC_KEY_ID_PREFIX}")
            if not self.wechatpay_public_key_file.is_file():
                raise ValueError(f"wechatpay_public_key_file {self.wechatpay_public_key_file} does not exist")
        return self

    def private_key_pem(self) -> bytes:
        if self.private_key is not None:
            return self.private_key.get_secret_value().encode("utf-8")
        assert self.private_key_file is not None
        return self.private_key_file.read_bytes()

    def api_v3_key_value(self) -> str:
        """The APIv3 key, whichever way it was given (``api_v3_key`` or ``api_v3_key_file``, read at load)."""
        secret = self.api_v3_key if self.api_v3_key is not None else self._api_v3_key_read
        assert secret is not None  # _complete guarantees one of the two
        return secret.get_secret_value()

    def public_keys(self) -> dict[str, bytes]:
        """Serial → PEM of the WeChat Pay keys this merchant verifies with (public-key mode)."""
        if self.wechatpay_public_key_id and self.wechatpay_public_key_file:
            return {self.wechatpay_public_key_id: self.wechatpay_public_key_file.read_bytes()}
        return {}

    def verifier(self, **kw: Any) -> Verifier:
        return Verifier(self.public_keys(), **kw)

    def client(self, base_url: str, **kw: Any) -> Client:
        """A :class:`wxpay.Client` acting as this merchant."""
        options: dict[str, Any] = {
            "mchid": self.mchid,
            "serial_no": self.merchant_serial_no,
            "private_key": _private_key(self.private_key_pem()),
            "api_v3_key": self.api_v3_key_value(),
            "base_url": base_url,
        }
        if self.platform_certificates:
            options["certificates"] = True
            if self.public_keys():
                options["verifier"] = self.verifier()
        else:
            options["verifier"] = self.verifier()
        return Client(**options, **kw)


@functools.lru_cache(maxsize=4096)
def _private_key(pem: bytes) -> Any:
    """A merchant's key, loaded once per process and without the RSA consistency check (it is the merchant's
    own; a broken one shows as WeChat Pay refusing our signatures): 0.1 s less CPU per merchant and night."""
    return load_private_key(pem, check=False)


class DuckLakeConfig(BaseModel):
    """Where the DuckLake warehouse lives (``warehouse_backend = "ducklake"``): its catalog and data files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    catalog: SecretStr  # "postgres:dbname=lake host=10.0.0.5 user=recon password=…", or a local "….ducklake" file
    data_path: str = Field(min_length=1)  # "s3://bucket/prefix/" (S3-compatible storage) or a shared directory
    s3_endpoint: str | None = None  # host:port of MinIO, Ceph, OSS, COS…; unset for AWS S3
    s3_key_id: SecretStr | None = None  # unset: the credential chain (environment, instance profile)
    s3_secret: SecretStr | None = None
    s3_region: str = "us-east-1"
    s3_url_style: Literal["path", "vhost"] = "path"
    s3_use_ssl: bool = True

    @field_validator("catalog", "s3_key_id", "s3_secret", mode="before")
    @classmethod
    def _secret_blocks(cls, value: Any) -> Any:
        return _resolve_secret(value)

    def lake(self) -> Lake:
        return Lake(
            catalog=self.catalog.get_secret_value(),
            data_path=self.data_path,
            s3_endpoint=self.s3_endpoint,
            s3_key_id=self.s3_key_id.get_secret_value() if self.s3_key_id else None,
            s3_secret=self.s3_secret.get_secret_value() if self.s3_secret else None,
            s3_region=self.s3_region,
            s3_url_style=self.s3_url_style,
            s3_use_ssl=self.s3_use_ssl,
        )


class AlertConfig(BaseModel):
    """Where alerts go and when they are worth sending."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    urls: list[SecretStr] = Field(default_factory=list)  # apprise URLs; they often carry tokens
    max_count: int = Field(default=0, ge=0)  # alert when open exceptions of the day exceed this many
    max_amount_fen: int = Field(default=0, ge=0)  # ... or the money at stake exceeds this many fen
    daily_digest: bool = False  # also send a short note on clean days
    top_items: int = Field(default=5, ge=1, le=50)
    notebook_hint: str = "./scripts/notebooks  (then open notebooks/02_exception_drilldown.ipynb)"
    retries: int = Field(default=2, ge=0, le=10)  # a failed delivery is tried again this many times
    retry_seconds: float = Field(default=30.0, ge=0)  # ... this long apart

    @field_validator("urls", mode="before")
    @classmethod
    def _urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v for v in re.split(r"[\s,]+", value) if v]
        return [_resolve_secret(v) for v in value]

    @field_validator("urls")
    @classmethod
    def _parseable(cls, urls: list[SecretStr]) -> list[SecretStr]:
        """Every URL must be one apprise can send to: a typo fails at start, not at 22:30 (the URL is not shown)."""
        if not urls:
            return urls
        import apprise  # ships with Prefect; imported only when there are URLs to check

        for index, url in enumerate(urls):
            text = url.get_secret_value()
            if not apprise.Apprise().add(text):
                scheme = text.split("://", 1)[0] if "://" in text else "(none)"
                hint = " (WeCom group robots are wecombot://<key>)" if scheme == "wxwork" else ""
                raise ValueError(f"url #{index + 1} (scheme {scheme!r}) is not a URL apprise can send to{hint}")
        return urls


class Settings(BaseSettings):
    """Everything the nightly pipeline needs."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True, toml_file=None
    )
    _by_mchid: tuple[list, dict[str, MerchantConfig]] | None = PrivateAttr(default=None)  # merchant() by mchid

    api_base_url: str = DEFAULT_BASE_URL
    merchants: list[MerchantConfig] = Field(min_length=1)
    local_orders: LocalOrdersSource | None = None
    local_refunds: LocalRefundsSource | None = None
    local_window_days: int = Field(default=3, ge=1, le=31)  # days read around the bill day
    local_min_ratio: float = Field(default=0.5, ge=0, le=1)  # a read below this share of what it replaces stops the run
    data_dir: Path = Path("var")
    warehouse_backend: Literal["duckdb", "ducklake"] = "duckdb"  # a DuckDB file, or a DuckLake (ducklake)
    ducklake: DuckLakeConfig | None = None
    warehouse: Path | None = None  # default <data_dir>/warehouse.duckdb
    archive: Path | None = None  # default <data_dir>/archive
    notification_log: Path | None = None  # default <data_dir>/notifications
    warehouse_wait_seconds: float = Field(default=120.0, ge=0)  # how long a command waits for a busy warehouse
    memory_limit: str = Field(default="2GB", pattern=r"^[0-9]+(\.[0-9]+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")
    pending_days: int = Field(default=2, ge=0, le=31)
    tolerance_fen: int = Field(default=0, ge=0)
    fee_tolerance_fen: int = Field(default=0, ge=0)
    bill_url_lifetime: float = Field(default=30.0, gt=1)
    bill_ready_deadline_hours: float = Field(default=6.0, ge=0)  # how long "not ready yet" is retried
    bill_retry_seconds: float = Field(default=600.0, gt=0)  # first wait after "not ready yet"; doubles, max 30 min
    concurrency: int = Field(default=2, ge=1, le=16)  # units of merchants loading at once in the nightly's process
    bills_batch_size: int = Field(default=50, ge=1, le=10_000)  # merchants per unit (one Prefect task or flow run)
    bills_per_transaction: int = Field(default=200, ge=1, le=10_000)  # a unit's small bills loaded together, at most
    bills_deployment: str | None = None  # "load-bills/bills-worker": units run on a work pool's workers (DuckLake)
    bills_unit_timeout: float = Field(default=3600.0, gt=0)  # s a unit may work on a worker (beyond its bills' wait)
    # the exception workbench (README "The exception workbench")
    action_wait_seconds: float = Field(default=30.0, ge=0)  # how long an action waits for a busy warehouse (then 5)
    action_threshold: int = Field(default=50, ge=1)  # a bulk action selecting more exceptions is refused
    query_classes: Annotated[list[str], NoDecode] = Field(default_factory=list)  # 补单 after the nightly recon
    query_max_orders: int = Field(default=100, ge=1, le=10_000)  # combine orders one 补单 pass asks about
    query_per_second: float = Field(default=5.0, gt=0)  # 补单 queries per second (WeChat Pay rate-limits)
    query_retries: int = Field(default=3, ge=0, le=10)  # a 429 / 5xx answer is asked again this many times
    query_retry_seconds: float = Field(default=1.0, ge=0)  # first wait before asking again; doubles
    schedule_cron: str = "30 22 * * *"
    schedule_timezone: str = "Asia/Shanghai"
    receiver_host: str = "127.0.0.1"
    receiver_port: int = Field(default=8080, ge=0, le=65535)
    # the receiver under attack (flows/notifications/limits.py says what each bound protects)
    receiver_max_body: ByteSize = Field(default=ByteSize(1 << 20), ge=1024)
    receiver_body_timeout: float = Field(default=10.0, gt=0, le=60)  # seconds for the whole body, else 408
    receiver_head_timeout: float = Field(default=10.0, gt=0, le=60)  # seconds for a request head, else closed
    receiver_keep_alive: float = Field(default=5.0, gt=0, le=300)
    receiver_max_connections: int = Field(default=1000, ge=1)  # lowered to fit the open-file limit
    receiver_backlog: int = Field(default=2048, ge=1)
    receiver_refused_per_minute: float = Field(default=60.0, ge=0)  # refusals a peer may cause; then 429
    receiver_refused_burst: int = Field(default=30, ge=1)
    receiver_rate_limit_loopback: bool = False
    receiver_trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)  # their XFF names the peer
    receiver_rejected_day_bytes: ByteSize = ByteSize(64 << 20)  # records of refused requests, per day file
    receiver_rejected_total_bytes: ByteSize = ByteSize(1 << 30)  # ... in all
    receiver_min_free_disk: str = Field(default="1GiB", pattern=r"^\s*[0-9]+(\.[0-9]+)?\s*(%|[KMGT]?i?B)\s*$")
    receiver_remember_days: int = Field(default=7, ge=2, le=31)  # days of ids a writer re-reads for duplicates
    receiver_max_duplicates: int = Field(default=32, ge=16)  # duplicate lines logged per notification id
    alerts: AlertConfig = AlertConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config = os.environ.get(CONFIG_ENV)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config)))
        return tuple(sources)

    @field_validator("receiver_min_free_disk")
    @classmethod
    def _free_disk_threshold(cls, value: str) -> str:
        _free_disk(value)  # ValueError naming what is wrong
        return value

    @field_validator("receiver_trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: Any) -> Any:
        if isinstance(value, str):  # comma-separated in the environment, or a JSON list
            value = (
                json.loads(value) if value.lstrip().startswith("[") else [v for v in re.split(r"[\s,]+", value) if v]
            )
        for proxy in value:
            ipaddress.ip_network(proxy, strict=False)  # ValueError: not an address or network
        return value

    @field_validator("query_classes", mode="before")
    @classmethod
    def _query_classes(cls, value: Any) -> Any:
        if isinstance(value, str):  # comma-separated in the environment, or a JSON list
            value = (
                json.loads(value) if value.lstrip().startswith("[") else [v for v in re.split(r"[\s,]+", value) if v]
            )
        from flows.recon.classes import QUERYABLE

        unknown = [c for c in value if c not in QUERYABLE]
        if unknown:
            raise ValueError(f"not a class 补单 can settle: {', '.join(unknown)} (it can: {', '.join(QUERYABLE)})")
        return value

    @model_validator(mode="after")
    def _unique(self) -> Settings:
        ids = [m.mchid for m in self.merchants]
        if len(set(ids)) != len(ids):
            raise ValueError("merchants: a mchid appears twice")
        if self.bills_deployment and self.warehouse_backend != "ducklake":
            raise ValueError("bills_deployment (units on workers) needs warehouse_backend = 'ducklake'")
        if self.warehouse_backend == "ducklake" and self.ducklake is None:
            raise ValueError("warehouse_backend = 'ducklake' needs [ducklake] catalog and data_path")
        if self.receiver_rejected_day_bytes > self.receiver_rejected_total_bytes:
            raise ValueError("receiver_rejected_day_bytes cannot exceed receiver_rejected_total_bytes")
        return self

    def receiver_limits(self) -> ReceiverLimits:
        """The ``receiver_*`` settings as the receiver's bounds."""
        free, share = _free_disk(self.receiver_min_free_disk)
        return ReceiverLimits(
            max_body=int(self.receiver_max_body),
            body_timeout=self.receiver_body_timeout,
            head_timeout=self.receiver_head_timeout,
            keep_alive=self.receiver_keep_alive,
            max_connections=self.receiver_max_connections,
            backlog=self.receiver_backlog,
            refused_per_minute=self.receiver_refused_per_minute,
            refused_burst=self.receiver_refused_burst,
            rate_limit_loopback=self.receiver_rate_limit_loopback,
            trusted_proxies=tuple(self.receiver_trusted_proxies),
            rejected_day_bytes=int(self.receiver_rejected_day_bytes),
            rejected_total_bytes=int(self.receiver_rejected_total_bytes),
            min_free_bytes=free,
            min_free_ratio=share,
        )

    @property
    def warehouse_path(self) -> Path:
        """The DuckDB file (the default backend); with DuckLake, where this machine keeps its run lock."""
        return self.warehouse or self.data_dir / "warehouse.duckdb"

    @property
    def warehouse_target(self) -> Path | Lake:
        """What :func:`flows.warehouse.connect` opens: the file, or the lake."""
        if self.warehouse_backend == "ducklake":
            assert self.ducklake is not None  # checked when the settings load
            return self.ducklake.lake()
        return self.warehouse_path

    @property
    def archive_root(self) -> Path:
        return self.archive or self.data_dir / "archive"

    @property
    def notification_root(self) -> Path:
        return self.notification_log or self.data_dir / "notifications"

    @property
    def bill_ready_deadline(self) -> timedelta:
        return timedelta(hours=self.bill_ready_deadline_hours)

    def merchant(self, mchid: str) -> MerchantConfig:
        index = self._by_mchid
        if index is None or index[0] is not self.merchants:  # built once (a copy with other merchants builds anew)
            index = self._by_mchid = (self.merchants, {m.mchid: m for m in self.merchants})
        found = index[1].get(mchid)
        if found is None:
            raise SettingsError(f"merchant {mchid} is not configured (merchants: {', '.join(self.mchids)})")
        return found

    @property
    def mchids(self) -> list[str]:
        return [m.mchid for m in self.merchants]


def _free_disk(text: str) -> tuple[int, float]:
    """``"1GiB"`` -> (bytes, 0.0); ``"5%"`` -> (0, 0.05): the receiver's free-disk threshold."""
    text = text.strip()
    if text.endswith("%"):
        share = float(text.removesuffix("%")) / 100
        if not 0 <= share < 1:
            raise ValueError("a share of the disk must be below 100%")
        return 0, share
    return int(TypeAdapter(ByteSize).validate_python(text)), 0.0


def _where(loc: tuple) -> str:
    """``merchants.0.api_v3_key (environment WXRECON_MERCHANTS, JSON)``: where to fix a setting."""
    key = ".".join(str(p) for p in loc)
    path = []
    for part in loc:
        if isinstance(part, int):
            break
        path.append(str(part))
    env = ENV_PREFIX + "__".join(path).upper()
    nested = len(path) < len(loc)
    return f"{key} (environment {env}{', JSON' if nested else ''})" if key else "(settings)"


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the settings (see the module docstring); raise :class:`SettingsError` naming what is wrong.

    Without ``config`` and without ``WXRECON_CONFIG``, ``wxrecon.toml`` in the current directory is read
    when it exists (a worker started in the project directory finds it there)."""
    previous = os.environ.get(CONFIG_ENV)
    if config is None and not previous and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    if config is not None:
        if not Path(config).is_file():
            raise SettingsError(f"settings file {config} does not exist")
        os.environ[CONFIG_ENV] = str(config)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = [f"{_where(err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False, include_input=False)]
        if config is None and not previous:
            problems.append(
                f"(no settings file was read: give --config, set {CONFIG_ENV}, or put {DEFAULT_CONFIG} in {Path.cwd()})"
            )
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems)) from None
    finally:
        if config is not None:
            if previous is None:
                os.environ.pop(CONFIG_ENV, None)
            else:
                os.environ[CONFIG_ENV] = previous


def describe(settings: Settings) -> Mapping[str, Any]:
    """The settings as shown to people: every secret masked."""
    return settings.model_dump(mode="json")
