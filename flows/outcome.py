"""What a night's run found, and what each kind of failure means for the operator, Prefect and the shell.

A failure is one of a few kinds, each with its own wording, exit code and Prefect state, so that nobody
has to read a traceback to know whose problem it is:

===============  ====  ==========================================================================
kind             exit  meaning, and who acts
===============  ====  ==========================================================================
(none)           0     ran; nothing needs attention
exceptions       1     ran; the day has exceptions for finance (the report lists them)
(usage)          2     the command line was wrong (unknown option, bad date, a day not yet over)
late             3     a bill was not ready by its deadline: WeChat Pay publishes it later; run again
configuration    4     settings missing or malformed, or WeChat Pay refused our credentials / merchant
                       id (401, 403, an unknown mchid, a key that does not match): an operator fixes it
busy             5     the warehouse is held by another run or a reader beyond the wait
integrity        6     a bill failed its SHA-1, gzip, format or summary check, a data check failed, or the
                       merchant's records failed theirs (a bad value, a duplicate key, an empty or
                       sharply shrunken export: nothing of them was replaced)
unavailable      7     WeChat Pay (or the network to it) kept failing after the retries (429, 5xx)
storage          8     the disk or the warehouse file failed us (no space, permission, corruption)
alert            9     the alert could not be delivered (after its retries)
failed           10    the run itself failed: a bug or an error nobody foresaw (the log has it)
===============  ====  ==========================================================================

When several happen in one run, the exit code is the first of: failed, storage, configuration,
integrity, unavailable, late, alert, exceptions. The Prefect flow run ends ``Failed`` for any of
failed, storage, configuration, integrity, unavailable or an undelivered alert; ``Completed`` named
``Late`` when bills are only late; plain ``Completed`` otherwise (exceptions are the day's findings,
not a failure of the run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from enum import IntEnum, StrEnum

from flows.storage import storage_fault_in
from wxpay.errors import (
    ApiError,
    AuthenticationError,
    BillDownloadError,
    BillError,
    BillNotReadyError,
    ConfigurationError,
    InvalidRequestError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
    TransportError,
    UnexpectedResponseError,
    VerificationError,
)


class Kind(StrEnum):
    """What kind of failure a problem is."""

    LATE = "late"
    CONFIGURATION = "configuration"
    INTEGRITY = "integrity"
    UNAVAILABLE = "unavailable"
    STORAGE = "storage"
    ALERT = "alert"
    FAILED = "failed"


class ExitCode(IntEnum):
    """The ``wxrecon`` exit codes (module docstring)."""

    OK = 0
    EXCEPTIONS = 1
    USAGE = 2
    LATE = 3
    CONFIGURATION = 4
    BUSY = 5
    INTEGRITY = 6
    UNAVAILABLE = 7
    STORAGE = 8
    ALERT = 9
    FAILED = 10


SEVERITY = (Kind.FAILED, Kind.STORAGE, Kind.CONFIGURATION, Kind.INTEGRITY, Kind.UNAVAILABLE, Kind.LATE, Kind.ALERT)
"""Kinds, the one that decides the exit code first."""
FAILING = frozenset({Kind.FAILED, Kind.STORAGE, Kind.CONFIGURATION, Kind.INTEGRITY, Kind.UNAVAILABLE, Kind.ALERT})
"""Kinds that end the Prefect flow run ``Failed``."""

ADVICE = {
    Kind.LATE: "WeChat Pay has not published the bill yet; a later run of the day picks it up",
    Kind.CONFIGURATION: "an operator problem, not finance's: check this merchant's settings and credentials",
    Kind.INTEGRITY: "nothing of that bill was loaded; the evidence is above and in the archive",
    Kind.UNAVAILABLE: "WeChat Pay kept failing after the retries; run the day again later",
    Kind.STORAGE: "free space or fix permissions where the warehouse and archive live, then run the day again",
    Kind.ALERT: "the alert route refused or could not be reached: check alerts.urls",
    Kind.FAILED: "the run itself failed; the Prefect log has the traceback",
}


def classify(error: BaseException) -> Kind:
    """The kind of a per-merchant failure, from the exception the work raised."""
    if storage_fault_in(error) is not None:
        return Kind.STORAGE  # a disk, quota, permission or damaged file: never a format, integrity or late finding
    if getattr(error, "problem_kind", None) in Kind.__members__.values():
        return Kind(error.problem_kind)  # errors that say what they are (flows.sources.LocalSourceError: integrity)
    if isinstance(error, BillNotReadyError):
        return Kind.LATE
    if isinstance(error, AuthenticationError | PermissionDeniedError | InvalidRequestError | ConfigurationError):
        return Kind.CONFIGURATION  # 401 SIGN_ERROR, 403 NO_AUTH, MCH_NOT_EXISTS, APPID_MCHID_NOT_MATCH, bad keys
    if isinstance(error, VerificationError):
        return Kind.CONFIGURATION  # WeChat Pay's answer does not verify with the key we were configured with
    if isinstance(error, BillDownloadError):
        return Kind.UNAVAILABLE  # the download kept failing or expiring: not the bill's content
    if isinstance(error, BillError):
        return Kind.INTEGRITY
    if isinstance(error, RateLimitedError | ServerError | TransportError | UnexpectedResponseError):
        return Kind.UNAVAILABLE
    if isinstance(error, ApiError):
        return Kind.UNAVAILABLE if error.retryable else Kind.CONFIGURATION
    return Kind.FAILED


@dataclass(frozen=True)
class Problem:
    """One thing that went wrong, in one line (never a secret)."""

    kind: Kind
    text: str
    mchid: str | None = None

    def __str__(self) -> str:
        return self.text


@dataclass
class DayOutcome:
    """What a night's run found: the CLI turns it into an exit code, the flow into its final state."""

    bill_date: date
    run_id: str | None = None
    loaded: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)  # merchants without trades that day (NO_STATEMENT_EXIST)
    kept: list[str] = field(default_factory=list)  # merchants whose bill an earlier run of the day loaded
    problems: list[Problem] = field(default_factory=list)
    classes: dict[str, int] = field(default_factory=dict)
    exceptions: int = 0
    pending: int = 0
    exposure_fen: int = 0
    opened: list[str] = field(default_factory=list)  # exceptions this run opened (or reopened), "class key"
    closed: list[str] = field(default_factory=list)  # exceptions this run resolved, "class key"
    removed: list[str] = field(default_factory=list)  # files a crashed run had left, removed at this start
    snapshot: int | None = None  # on a DuckLake, the snapshot the alert and report read (wxrecon report --as-of)
    alert: object | None = None  # flows.alerts.Alert
    alert_sent: bool = False

    def of(self, kind: Kind) -> list[str]:
        return [p.text for p in self.problems if p.kind is kind]

    @property
    def late(self) -> list[str]:
        return self.of(Kind.LATE)

    @property
    def integrity(self) -> list[str]:
        return self.of(Kind.INTEGRITY)

    @property
    def worst(self) -> Kind | None:
        kinds = {p.kind for p in self.problems}
        return next((k for k in SEVERITY if k in kinds), None)

    @property
    def failing(self) -> bool:
        """Whether the run should end ``Failed`` in Prefect."""
        return any(p.kind in FAILING for p in self.problems)

    @property
    def ok(self) -> bool:
        return not (self.problems or self.exceptions)

    def exit_code(self) -> ExitCode:
        worst = self.worst
        if worst is not None:
            return ExitCode[worst.name]
        return ExitCode.EXCEPTIONS if self.exceptions else ExitCode.OK

    def headline(self) -> str:
        """The failure kinds of the run, in words, worst first ('' when there are none)."""
        parts = []
        for kind in SEVERITY:
            found = [p for p in self.problems if p.kind is kind]
            if found:
                merchants = sorted({p.mchid for p in found if p.mchid})
                who = f" ({', '.join(merchants)})" if merchants else ""
                parts.append(f"{kind.value.upper()}{who}")
        return "; ".join(parts)
