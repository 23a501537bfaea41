"""``wxrecon``: the command line of the reconciliation pipeline.

Exit codes (so a scheduler or a shell script can tell what a run found) are :class:`flows.outcome.ExitCode`,
listed by ``wxrecon --help``. Every command that opens the warehouse says "busy" the same way when another
run or a reader holds it: one line, exit 5. Runs log to the Prefect server when one is configured
(``PREFECT_API_URL``); the console shows the command's own output.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import date, datetime
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from flows.money import fmt_yuan
from flows.outcome import ExitCode
from wxpay.models import BEIJING as BEIJING_TZ

EXIT_CODES = """Exit codes:

\b
  0  ran; nothing needs attention
  1  ran; the day has exceptions for finance
  2  the command line was wrong (bad option or date, a day not over yet)
  3  late: a bill was not ready by its deadline (a later run picks it up)
  4  configuration: settings missing or malformed, or credentials refused by WeChat Pay
  5  busy: another run or a reader holds the warehouse
  6  integrity: a bill, a data check or the merchant's records failed their checks (nothing loaded)
  7  unavailable: WeChat Pay kept failing after the retries
  8  storage: disk full, permission denied or a damaged warehouse file
  9  alert: the alert could not be delivered
  10 failed: the run itself failed (see the log)"""

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="WeChat Pay combine-order reconciliation.",
    epilog=EXIT_CODES,
    rich_markup_mode=None,
)
console = Console()


@app.callback()
def _before_any_command() -> None:
    _quiet_prefect()


EXIT_OK, EXIT_EXCEPTIONS, EXIT_USAGE = ExitCode.OK, ExitCode.EXCEPTIONS, ExitCode.USAGE
EXIT_SETTINGS, EXIT_BUSY = ExitCode.CONFIGURATION, ExitCode.BUSY

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="settings TOML (else WXRECON_CONFIG / env)")]


def _quiet_prefect() -> None:
    """Offline-friendly Prefect defaults, unless the user chose otherwise (shared/notes/runtime.md §2): the
    console shows the command's own output (which names every problem), while the run's logs, INFO and up,
    still go to the Prefect server. ``PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL=INFO`` shows them here too."""
    for name, value in (
        ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
        ("DO_NOT_TRACK", "1"),
        ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"),
        ("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL"),
    ):
        os.environ.setdefault(name, value)


def _settings(config: Path | None):
    from flows.settings import SettingsError, load_settings

    try:
        return load_settings(config)
    except SettingsError as exc:
        console.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(EXIT_SETTINGS) from None


def _one_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _handled(command: Callable[..., Any]) -> Callable[..., Any]:
    """One behaviour for every command: a busy warehouse is one line and exit 5, a day not over yet is a
    usage error; anything else that escapes is the run failing (its kind decides the code)."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.BadParameter, KeyboardInterrupt):
            raise
        except Exception as exc:
            # imported here: importing Prefect before _quiet_prefect() has set its environment would fix
            # its logging to what the environment said then
            from flows.nightly import BillDateError
            from flows.outcome import classify
            from flows.warehouse import RunInProgress, WarehouseBusy

            if isinstance(exc, RunInProgress | WarehouseBusy):
                console.print(f"[red]busy:[/red] {_one_line(exc)}", highlight=False, soft_wrap=True)
                raise typer.Exit(EXIT_BUSY) from None
            if isinstance(exc, BillDateError):
                console.print(f"[red]{_one_line(exc)}[/red]", highlight=False, soft_wrap=True)
                raise typer.Exit(EXIT_USAGE) from None
            from flows.storage import storage_fault_in

            kind = classify(exc)
            named = storage_fault_in(exc) or exc  # a disk fault DuckDB reports in words: its file and what to do
            message = f"[red]{kind.value}:[/red] {type(named).__name__}: {_one_line(named)}"
            console.print(message, highlight=False, soft_wrap=True)
            raise typer.Exit(ExitCode[kind.name]) from None

    return run


def _print_exceptions(rows: list[dict], title: str) -> None:
    """One line per exception with its amounts, then its explanation, readable in 80 columns (ids whole)."""
    console.print(f"[bold]{title}[/bold]")
    for row in rows:
        key = row.get("notification_id") if row["item_kind"] == "notification_line" else row["item_key"]
        amounts = ", ".join(
            f"{label} {fmt_yuan(row[name])}"
            for label, name in (
                ("bill", "bill_fen"),
                ("local", "local_fen"),
                ("notified", "notified_fen"),
                ("difference", "diff_fen"),
            )
            if row[name] is not None
        )
        colour = "yellow" if row["state"] == "pending" else "red"
        resolved = row.get("work_state") == "resolved"
        colour = "green" if resolved else colour
        mark = " (resolved by hand)" if resolved else ""
        console.print(f"  [{colour}]{row['class']}[/{colour}] {row['mchid']} {key or '?'}{mark}", highlight=False)
        if amounts:
            console.print(f"      {amounts}", highlight=False)
        if row.get("detail"):
            console.print(f"      {row['detail']}", style="dim", overflow="fold", highlight=False)


def _print_outcome(outcome) -> None:
    from flows.outcome import ADVICE, Kind

    console.print(
        f"[bold]{outcome.bill_date}[/bold]: {outcome.exceptions} exceptions, {outcome.pending} pending,"
        f" {fmt_yuan(outcome.exposure_fen)} at stake",
        highlight=False,
    )
    console.print(f"  loaded: {', '.join(outcome.loaded) or 'none'}", highlight=False)
    if outcome.kept:
        console.print(f"  kept (loaded by an earlier run): {', '.join(outcome.kept)}", highlight=False)
    if outcome.empty:
        console.print(f"  no trades: {', '.join(outcome.empty)}", highlight=False)
    if outcome.removed:
        console.print(f"  removed {len(outcome.removed)} file(s) a crashed run had left", highlight=False)
    if outcome.snapshot is not None:
        console.print(
            f"  DuckLake snapshot {outcome.snapshot}:"
            f" wxrecon report --date {outcome.bill_date} --as-of {outcome.snapshot}",
            highlight=False,
        )
    if outcome.opened or outcome.closed:
        console.print(f"since the previous run: {len(outcome.opened)} opened, {len(outcome.closed)} closed")
        for item in outcome.opened[:10]:
            console.print(f"  opened {item}", highlight=False)
        for item in outcome.closed[:10]:
            console.print(f"  closed {item}", highlight=False)
    for kind in Kind:
        problems = outcome.of(kind)
        if problems:
            console.print(f"[red]{kind.value.upper()}[/red]: {ADVICE[kind]}", highlight=False)
            for problem in problems:
                console.print(f"  {problem}", overflow="fold", highlight=False)
    if outcome.alert is not None:
        state = "sent" if outcome.alert_sent else "NOT sent" if outcome.of(Kind.ALERT) else "not sent (no alerts.urls)"
        console.print(f"alert {state}: {outcome.alert.title}", overflow="fold", highlight=False)


def _run_with_progress(run: Callable[[], Any]) -> Any:
    """Run a flow call while drawing its progress: the step, merchants done / total, day k of n."""
    import flows.nightly as nightly

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console, transient=True
    ) as progress:
        bars: dict[str, Any] = {}

        def bar(name: str, total: int) -> Any:
            if name not in bars:
                bars[name] = progress.add_task(name, total=total)
            return bars[name]

        def hook(event: str, done: int, total: int) -> None:
            if event.startswith("step: "):
                progress.update(bar("step", total), completed=done - 1, description=event.removeprefix("step: "))
            elif event == "merchants":
                progress.update(bar("merchants", total), completed=done, description="merchants' bills")
            elif event == "day":
                progress.update(bar("day", total), completed=done - 1, description="days")

        nightly.progress_hook = hook
        try:
            return run()
        finally:
            nightly.progress_hook = None


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a date (YYYY-MM-DD)") from None


@app.command()
@_handled
def demo(
    data_dir: Annotated[Path, typer.Option(help="where the demo leaves its warehouse, archive and logs")] = Path("var"),
) -> None:
    """Run the whole product offline: simulator, receiver, a business day, the nightly flow, the alert."""
    _quiet_prefect()
    from flows.demo import run_demo

    result = run_demo(data_dir, say=console.print)
    _print_outcome(result.outcome)
    _print_exceptions(result.exceptions, f"Exceptions of {result.bill_date}")
    for alert in result.alerts[:1]:
        console.print(f"[bold]alert received by the local webhook[/bold]: {alert.get('title')}", highlight=False)
        console.print(alert.get("message", ""), highlight=False)
    if result.resolved is not None and result.rerun is not None:
        console.print(
            f"[bold]resolved through the workbench[/bold]: {result.resolved['class']} {result.resolved['item_key']}"
            f" (wxrecon exceptions show {result.resolved['exception_id'][:12]})",
            highlight=False,
        )
        console.print(
            f"re-run of {result.bill_date}: the alert counts {result.rerun.exceptions} exceptions"
            f" (was {result.outcome.exceptions})",
            highlight=False,
        )
        for alert in result.alerts[1:]:
            console.print(f"[bold]second alert[/bold]: {alert.get('title')}", highlight=False)
    verdict = "found exactly the injected discrepancies" if result.as_injected else "did NOT find what it injected"
    console.print(f"demo {verdict}. Warehouse: {result.data_dir / 'warehouse.duckdb'}; notebooks: ./scripts/notebooks")
    raise typer.Exit(EXIT_OK if result.as_injected else EXIT_EXCEPTIONS)


@app.command()
@_handled
def run(
    day: Annotated[str | None, typer.Option("--date", help="bill day YYYY-MM-DD (default: yesterday, Beijing)")] = None,
    config: ConfigOption = None,
    refetch: Annotated[bool, typer.Option(help="fetch bills again that an earlier run of the day loaded")] = False,
) -> None:
    """Reconcile one day now (the nightly flow, run once)."""
    _quiet_prefect()
    settings = _settings(config)
    from flows.nightly import run_day, using

    bill_date = _date(day) if day else None
    with using(settings):
        outcome = _run_with_progress(lambda: run_day(bill_date, refetch=refetch))
    _print_outcome(outcome)
    raise typer.Exit(outcome.exit_code())


@app.command()
@_handled
def backfill(
    start: Annotated[str, typer.Option(help="first day YYYY-MM-DD")],
    end: Annotated[str, typer.Option(help="last day YYYY-MM-DD (inclusive)")],
    config: ConfigOption = None,
    refetch: Annotated[bool, typer.Option(help="fetch bills again that an earlier run loaded")] = False,
) -> None:
    """Reconcile a range of days in date order (re-running a day replaces it)."""
    _quiet_prefect()
    settings = _settings(config)
    from flows.nightly import backfill as backfill_flow
    from flows.nightly import using

    with using(settings):
        outcomes = _run_with_progress(lambda: backfill_flow(_date(start), _date(end), refetch=refetch))
    for outcome in outcomes:
        _print_outcome(outcome)
    codes = [outcome.exit_code() for outcome in outcomes]
    order = [ExitCode.FAILED, ExitCode.STORAGE, ExitCode.CONFIGURATION, ExitCode.INTEGRITY, ExitCode.UNAVAILABLE]
    order += [ExitCode.LATE, ExitCode.ALERT, ExitCode.EXCEPTIONS]
    raise typer.Exit(next((code for code in order if code in codes), EXIT_OK))


@app.command()
@_handled
def report(
    day: Annotated[str | None, typer.Option("--date", help="bill day YYYY-MM-DD (default: yesterday, Beijing)")] = None,
    as_of: Annotated[
        int | None, typer.Option("--as-of", help="DuckLake snapshot id to read (what an alert saw); a lake only")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Print a reconciled day's summary, control totals and exceptions (read-only)."""
    settings = _settings(config)
    import duckdb

    from flows.clock import yesterday
    from flows.report import control_totals, exceptions_of_day, summary_of_day

    bill_date = _date(day) if day else yesterday()
    if as_of is not None and settings.warehouse_backend != "ducklake":
        console.print(
            f"--as-of reads a DuckLake snapshot; this warehouse is a DuckDB file ({settings.warehouse_path}),"
            " which keeps no history",
            highlight=False,
        )
        raise typer.Exit(EXIT_USAGE)
    wait = settings.warehouse_wait_seconds
    target = settings.warehouse_target
    where = f"snapshot {as_of} of the DuckLake" if as_of is not None else str(target)
    try:
        summary = summary_of_day(target, bill_date, wait=wait, snapshot=as_of)
    except duckdb.CatalogException:
        if as_of is None:
            raise
        summary = []  # a snapshot from before the warehouse had its marts
    if not summary:
        console.print(
            f"{bill_date} has not been reconciled (no items in {where}): wxrecon run --date {bill_date}",
            highlight=False,
        )
        raise typer.Exit(EXIT_USAGE)
    table = Table(title=f"Reconciliation {bill_date}")
    for column in ("merchant", "class", "items", "bill", "local", "at stake"):
        right = column in ("items", "bill", "local", "at stake")
        table.add_column(column, justify="right" if right else "left", overflow="fold", no_wrap=column == "merchant")
    for row in summary:
        style = "" if row["class"] == "matched" else ("yellow" if row["state"] == "pending" else "red")
        cls = row["class"] if row["item_kind"] == "payment" else f"{row['class']} ({row['item_kind']})"
        table.add_row(
            row["mchid"],
            f"[{style}]{cls}[/{style}]" if style else cls,
            str(row["items"]),
            fmt_yuan(row["bill_fen"]),
            fmt_yuan(row["local_fen"]),
            fmt_yuan(row["exposure_fen"]),
        )
    console.print(table)
    totals = Table(title="Control totals (the bill's summary line vs its rows vs your records)")
    for column in ("merchant", "rows", "summary", "detail", "local paid", "bill-local"):
        totals.add_column(column, justify="left" if column == "merchant" else "right", no_wrap=column == "merchant")
    for row in control_totals(target, bill_date, wait=wait, snapshot=as_of):
        totals.add_row(
            row["mchid"],
            f"{row['summary_rows']}/{row['detail_rows']}",
            fmt_yuan(row["summary_order_fen"], empty="-"),
            fmt_yuan(row["detail_order_fen"], empty="-"),
            fmt_yuan(row["local_paid_fen"], empty="-"),
            fmt_yuan(row["bill_minus_local_fen"], empty="-"),
        )
    console.print(totals)
    exceptions = [r for r in exceptions_of_day(target, bill_date, wait=wait, snapshot=as_of) if r["state"] != "pending"]
    if exceptions:
        _print_exceptions(exceptions, "Exceptions (most at stake first)")
    unresolved = [r for r in exceptions if r.get("work_state") != "resolved"]
    raise typer.Exit(EXIT_EXCEPTIONS if unresolved else EXIT_OK)


@app.command()
@_handled
def receiver(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="default: settings.receiver_host")] = None,
    port: Annotated[int | None, typer.Option(help="default: settings.receiver_port")] = None,
) -> None:
    """Serve the notify_url receiver (verify, decrypt, log durably, answer WeChat Pay)."""
    settings = _settings(config)
    import logging

    from flows.notifications import NotificationLog, ReceiverMerchant, ReceiverServer, create_app
    from flows.notifications.connections import raise_fd_limit

    merchants = {}
    for merchant in settings.merchants:
        if merchant.receives_notifications:
            refresh = None
            verifier = merchant.verifier()
            if merchant.platform_certificates:
                client = merchant.client(settings.api_base_url)
                verifier, refresh = client.verifier, client.refresh_certificates
            merchants[merchant.mchid] = ReceiverMerchant(verifier, merchant.api_v3_key_value(), refresh)
    if not merchants:
        console.print("[red]no merchant has receives_notifications = true[/red]")
        raise typer.Exit(EXIT_SETTINGS)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    open_files = raise_fd_limit()
    log = NotificationLog(
        settings.notification_root,
        remember_days=settings.receiver_remember_days,
        max_duplicates=settings.receiver_max_duplicates,
    )
    limits = settings.receiver_limits()
    server = ReceiverServer(
        create_app(merchants, log, limits=limits),
        host if host is not None else settings.receiver_host,
        port if port is not None else settings.receiver_port,
        log_level="info",
    )
    console.print(
        f"notify_url: {server.url}/wxpay/notify/<mchid> for {', '.join(merchants)} (put TLS in front of it); "
        f"health: {server.url}/wxpay/notify/_health (loopback only)",
        soft_wrap=True,
    )
    console.print(
        f"limits: {server.max_connections} connections (open-file limit {open_files}), head/body timeouts "
        f"{limits.head_timeout:g}/{limits.body_timeout:g} s, body {limits.max_body} bytes, "
        f"{limits.refused_per_minute:g} refusals a minute per peer, records of refused requests "
        f"{limits.rejected_day_bytes} bytes a day / {limits.rejected_total_bytes} in all, "
        f"503 below {settings.receiver_min_free_disk} free",
        soft_wrap=True,
    )
    server.run()


@app.command()
def sim(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="0: any free port")] = 8421,
    state_dir: Annotated[Path, typer.Option(help="credentials, records and wxrecon.toml are written here")] = Path(
        "var/sim"
    ),
    merchants: Annotated[int, typer.Option()] = 3,
    seed: Annotated[int, typer.Option()] = 0,
    start: Annotated[
        str | None, typer.Option(help="business clock start, ISO 8601 with offset (default: now, Beijing)")
    ] = None,
    business_day: Annotated[
        str | None, typer.Option(help="create this day of business at start, YYYY-MM-DD (e.g. yesterday)")
    ] = None,
    orders: Annotated[int, typer.Option(min=1, max=1000, help="combine orders of that day")] = 36,  # MAX_ORDERS
    notify_url: Annotated[
        str | None, typer.Option(help="where its callbacks go (default: wxrecon receiver on 127.0.0.1:8080)")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="the settings' data_dir: warehouse, archive, log (default <state-dir>/recon)")
    ] = None,
) -> None:
    """Run the offline WeChat Pay simulator (as python -m wxpay.sim serve) and write <state-dir>/wxrecon.toml for it."""
    import json

    from flows.settings import SettingsError, load_settings
    from flows.simsettings import write_sim_settings
    from wxpay.sim.standalone import start_standalone

    options = {}
    if start:
        try:
            options["start"] = datetime.fromisoformat(start)
        except ValueError:
            raise typer.BadParameter(f"{start!r} is not an ISO 8601 time", param_hint="--start") from None
        if options["start"].tzinfo is None:
            raise typer.BadParameter(f"{start!r} has no offset (e.g. +08:00)", param_hint="--start")
    if business_day:
        options["business_day"] = _date(business_day)
    running = start_standalone(
        host=host,
        port=port,
        merchants=merchants,
        seed=seed,
        state_dir=state_dir,
        orders=orders,
        notify_url=notify_url,
        **options,
    )
    try:
        info = running.info
        settings = write_sim_settings(
            info, running.state_dir / "wxrecon.toml", data_dir=data_dir or running.state_dir / "recon"
        )
        try:
            load_settings(settings)
        except SettingsError as exc:  # the environment's WXRECON_* settings beat the file's
            console.print(f"[yellow]{settings} does not load in this environment:[/yellow] {exc}", soft_wrap=True)
        info["settings"] = str(settings)
        print(json.dumps(info, indent=2), flush=True)
        console.print(_sim_next_steps(info), soft_wrap=True, highlight=False)
    except BaseException:
        running.stop()
        raise
    running.wait()


def _sim_next_steps(info: dict) -> str:
    """What to run next against the simulator, with its real URL, paths and day."""
    settings, url = info["settings"], info["base_url"]
    business = info.get("business")
    lines = [f"WeChat Pay simulator on {url}; settings for it in {settings}"]
    if business:
        day = business["day"]
        lines.append(
            f"day of business {day}: {business['paid']} paid (+{business['paid_after_midnight']} after midnight),"
            f" {business['unpaid']} unpaid, {business['closed']} closed; callbacks to {business['notify_url']}"
        )
    else:
        day = "YYYY-MM-DD"
    initiator = next(m["mchid"] for m in info["merchants"] if m["combine_initiator"])
    lines += [
        "next:",
        f"  wxrecon receiver --config {settings}    # the notify_url: http://127.0.0.1:8080/wxpay/notify/{initiator}",
    ]
    if not business:
        lines.append(f"  python -m wxpay.sim business --url {url} --day {day} --out {info['business_root']}/{day}")
    lines.append(f"  wxrecon run --date {day} --config {settings}")
    return "\n".join(lines)


@app.command()
@_handled
def deploy(config: ConfigOption = None) -> None:
    """Serve the nightly deployment: reconcile yesterday at 22:30 Asia/Shanghai (settings.schedule_*)."""
    _quiet_prefect()
    settings = _settings(config)
    from flows.deploy import SERVED, serve_nightly

    console.print(
        f"serving deployment reconcile-day/{SERVED}: cron '{settings.schedule_cron}' in {settings.schedule_timezone}",
        highlight=False,
    )
    serve_nightly(settings, config)


@app.command("load-bill")
@_handled
def load_bill_command(
    file: Annotated[Path, typer.Argument(help="the bill from the merchant portal (csv, or gz)")],
    mchid: Annotated[str, typer.Option("--mchid", help="the merchant whose bill it is")],
    day: Annotated[str, typer.Option("--date", help="the bill's day YYYY-MM-DD")],
    bill_type: Annotated[str, typer.Option("--type", help="trade_all, trade_success or trade_refund")] = "trade_all",
    by: Annotated[str | None, typer.Option("--by", help="who loads it (default: WXRECON_USER, else the login)")] = None,
    config: ConfigOption = None,
) -> None:
    """Load a bill downloaded by hand from the merchant portal (the same checks as the API's; lineage manual)."""
    settings = _settings(config)
    from flows.bills import BillArchive, ManualBillError, load_manual_bill
    from flows.recon.workbench import open_for_action

    bill_date = _date(day)
    con = open_for_action(settings.warehouse_target, wait=settings.action_wait_seconds)
    try:
        loaded = load_manual_bill(
            con, BillArchive(settings.archive_root), file, mchid=mchid, bill_date=bill_date, bill_type=bill_type,
            loaded_by=_actor(by),
        )  # fmt: skip
    except ManualBillError as exc:
        console.print(f"[red]refused:[/red] {exc}; nothing was written", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    finally:
        con.close()
    replaced = f"; it replaced the load {loaded.previous_sha1}" if loaded.previous_sha1 else ""
    console.print(
        f"loaded {bill_type} of {mchid} for {bill_date}: {loaded.load.row_count} rows, SHA-1 {loaded.archived.sha1},"
        f" lineage manual{replaced}; archived as {loaded.archived.path}. The next run of the day asks WeChat Pay"
        " again and confirms or replaces it: wxrecon run --date " + bill_date.isoformat(),
        highlight=False,
        soft_wrap=True,
    )


# --- the exception workbench ------------------------------------------------------------------------

exceptions_app = typer.Typer(
    no_args_is_help=True,
    help="The exception workbench: list, show, assign, resolve, reopen, query (补单). Reads are read-only; each"
    " action is one short transaction that waits at most action_wait_seconds for a busy warehouse (then exit 5).",
    rich_markup_mode=None,
)
app.add_typer(exceptions_app, name="exceptions")

IdsArgument = Annotated[list[str] | None, typer.Argument(help="exception ids (a unique prefix of 6+ characters)")]
MchidOption = Annotated[list[str] | None, typer.Option("--mchid", help="merchant (repeatable)")]
ClassOption = Annotated[list[str] | None, typer.Option("--class", help="class (repeatable)")]
FromOption = Annotated[str | None, typer.Option("--from", help="first bill day YYYY-MM-DD")]
ToOption = Annotated[str | None, typer.Option("--to", help="last bill day YYYY-MM-DD")]
DayOption = Annotated[str | None, typer.Option("--date", help="one bill day YYYY-MM-DD")]
MinOption = Annotated[int | None, typer.Option("--min-fen", help="money at stake at least (fen)")]
MaxOption = Annotated[int | None, typer.Option("--max-fen", help="money at stake at most (fen)")]
ByOption = Annotated[str | None, typer.Option("--by", help="who acts (default: WXRECON_USER, else the login name)")]
NoteOption = Annotated[str | None, typer.Option("--note", help="why (kept in the audit trail)")]
LimitOption = Annotated[
    int | None,
    typer.Option("--max", min=1, help="confirm a bulk action of up to this many (default: action_threshold)"),
]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="show what would change; write nothing")]


def _selection(mchid, cls, start, end, day, min_fen, max_fen, states=None):
    from flows.recon.workbench import Selection

    if day and (start or end):
        raise typer.BadParameter("give --date or --from/--to, not both")
    first = _date(day or start) if (day or start) else None
    last = _date(day or end) if (day or end) else None
    return Selection(
        mchids=tuple(mchid or ()),
        classes=tuple(cls or ()),
        start=first,
        end=last,
        min_fen=min_fen,
        max_fen=max_fen,
        work_states=tuple(states or ()),
    )


def _actor(by: str | None) -> str:
    if by:
        return by
    import getpass

    return os.environ.get("WXRECON_USER") or getpass.getuser()


def _workbench_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """A refused action (bad id, kind, note, filter) is one red line naming what was wrong, exit 2."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        from flows.recon.workbench import WorkbenchError

        try:
            return command(*args, **kwargs)
        except WorkbenchError as exc:
            console.print(f"[red]refused:[/red] {exc}; nothing was written", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USAGE) from None

    return run


def _print_rows(rows: list[dict], title: str) -> None:
    """One line per exception, ids whole: id, day, merchant, class, work state, money at stake, key."""
    console.print(f"[bold]{title}[/bold]", highlight=False, soft_wrap=True)
    for row in rows:
        state = row["work_state"] + (f" ({row['resolution']})" if row.get("resolution") else "")
        state += f" → {row['assignee']}" if row.get("assignee") and row["work_state"] != "resolved" else ""
        console.print(
            f"  {row['exception_id'][:12]} {row['recon_date']} {row['mchid']} {row['class']}"
            f" {fmt_yuan(row['exposure_fen'], empty='-')} {row['item_key']} [{state}]",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )


def _action_done(result, verb: str) -> None:
    if not result.applied:
        _print_rows(result.rows, f"would {verb} {result.count} exception(s) (dry run: nothing written)")
        return
    _print_rows(result.rows, f"{verb} {result.count} exception(s)")
    console.print(f"{verb}: {result.count} (batch {result.batch_id[:12]} in the audit trail)", highlight=False)


def _action_connection(settings):
    from flows.recon.workbench import open_for_action

    return open_for_action(settings.warehouse_target, wait=settings.action_wait_seconds)


@exceptions_app.command("list")
@_handled
@_workbench_errors
def exceptions_list(
    mchid: MchidOption = None,
    cls: ClassOption = None,
    start: FromOption = None,
    end: ToOption = None,
    day: DayOption = None,
    min_fen: MinOption = None,
    max_fen: MaxOption = None,
    state: Annotated[
        list[str] | None, typer.Option("--state", help="open, assigned, resolved (default: open and assigned)")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """List exceptions (read-only), oldest day first."""
    settings = _settings(config)
    from flows.recon import workbench
    from flows.warehouse import open_warehouse

    selection = _selection(mchid, cls, start, end, day, min_fen, max_fen, state or ("open", "assigned"))
    con = open_warehouse(settings.warehouse_target, read_only=True, wait=settings.warehouse_wait_seconds)
    try:
        rows = workbench.select(con, selection)
    finally:
        con.close()
    _print_rows(rows, f"{len(rows)} exception(s): {selection.describe()}")


@exceptions_app.command("show")
@_handled
@_workbench_errors
def exceptions_show(exception_id: Annotated[str, typer.Argument()], config: ConfigOption = None) -> None:
    """One exception with its amounts, evidence, proposal and audit trail (read-only)."""
    settings = _settings(config)
    from flows.recon import workbench
    from flows.warehouse import open_warehouse

    con = open_warehouse(settings.warehouse_target, read_only=True, wait=settings.warehouse_wait_seconds)
    try:
        (full,) = workbench.resolve_ids(con, [exception_id])
        (row,) = workbench.select(con, ids=[full])
        trail = workbench.history(con, full)
    finally:
        con.close()
    for name, value in row.items():
        if value is not None:
            shown = fmt_yuan(value) if name.endswith("_fen") else value
            console.print(f"{name:>22}: {shown}", highlight=False, soft_wrap=True)
    console.print(f"[bold]audit trail ({len(trail)})[/bold]")
    for action in trail:
        when = action["acted_at"].astimezone(BEIJING_TZ).strftime("%Y-%m-%d %H:%M:%S")
        what = action["action"] + (f" {action['resolution']}" if action["resolution"] else "")
        what += f" → {action['assignee']}" if action["action"] == "assigned" else ""
        console.print(f"  {when} {action['actor']}: {what}", highlight=False, soft_wrap=True)
        if action["note"]:
            console.print(f"      {action['note']}", style="dim", highlight=False, soft_wrap=True)


@exceptions_app.command("assign")
@_handled
@_workbench_errors
def exceptions_assign(
    ids: IdsArgument = None,
    to: Annotated[str, typer.Option("--assignee", help="who works on them")] = "",
    mchid: MchidOption = None,
    cls: ClassOption = None,
    start: FromOption = None,
    end: ToOption = None,
    day: DayOption = None,
    min_fen: MinOption = None,
    max_fen: MaxOption = None,
    by: ByOption = None,
    note: NoteOption = None,
    limit: LimitOption = None,
    dry_run: DryRunOption = False,
    config: ConfigOption = None,
) -> None:
    """Assign exceptions (ids, or a filter) to someone."""
    settings = _settings(config)
    from flows.recon import workbench

    selection = _selection(mchid, cls, start, end, day, min_fen, max_fen)
    con = _action_connection(settings)
    try:
        result = workbench.assign(
            con,
            to,
            ids=ids,
            selection=selection,
            actor=_actor(by),
            note=note,
            threshold=limit or settings.action_threshold,
            apply=not dry_run,
        )
    finally:
        con.close()
    _action_done(result, "assigned")


@exceptions_app.command("resolve")
@_handled
@_workbench_errors
def exceptions_resolve(
    ids: IdsArgument = None,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            help="explained, written_off, recovered, refunded_to_payer, adjusted_locally,"
            " false_positive, never_paid, paid_bill_pending (default: what a 补单 query proposed)",
        ),
    ] = None,
    note: NoteOption = None,
    mchid: MchidOption = None,
    cls: ClassOption = None,
    start: FromOption = None,
    end: ToOption = None,
    day: DayOption = None,
    min_fen: MinOption = None,
    max_fen: MaxOption = None,
    by: ByOption = None,
    limit: LimitOption = None,
    dry_run: DryRunOption = False,
    config: ConfigOption = None,
) -> None:
    """Resolve exceptions (ids, or a filter) by hand, with a kind and a note."""
    settings = _settings(config)
    from flows.recon.workbench import resolve_with_settings

    result = resolve_with_settings(
        settings,
        ids,
        kind=kind,
        note=note,
        selection=_selection(mchid, cls, start, end, day, min_fen, max_fen),
        actor=_actor(by),
        limit=limit,
        dry_run=dry_run,
    )
    _action_done(result, "resolved")


@exceptions_app.command("reopen")
@_handled
@_workbench_errors
def exceptions_reopen(
    ids: IdsArgument = None,
    note: NoteOption = None,
    by: ByOption = None,
    dry_run: DryRunOption = False,
    config: ConfigOption = None,
) -> None:
    """Reopen manual resolutions (ids)."""
    settings = _settings(config)
    from flows.recon import workbench

    con = _action_connection(settings)
    try:
        result = workbench.reopen(con, ids=ids or [], actor=_actor(by), note=note, apply=not dry_run)
    finally:
        con.close()
    _action_done(result, "reopened")


@exceptions_app.command("query")
@_handled
@_workbench_errors
def exceptions_query(
    ids: IdsArgument = None,
    mchid: MchidOption = None,
    cls: ClassOption = None,
    start: FromOption = None,
    end: ToOption = None,
    day: DayOption = None,
    by: ByOption = None,
    config: ConfigOption = None,
) -> None:
    """补单: ask WeChat Pay about the combine orders of exceptions; attach the answers and their proposals."""
    settings = _settings(config)
    from flows.recon.query import query_for_settings

    selection = _selection(mchid, cls, start, end, day, None, None)
    con = _action_connection(settings)
    try:
        report = query_for_settings(con, settings, ids=ids, selection=selection, actor=_actor(by))
    finally:
        con.close()
    for queried in report.queried:
        if queried.error:
            console.print(f"[red]{queried.combine_out_trade_no}: {queried.error}[/red]", highlight=False)
        else:
            state = queried.evidence["trade_state"]
            proposals = ", ".join(sorted({p or "no proposal" for p in queried.proposals.values()}))
            console.print(f"{queried.combine_out_trade_no}: WeChat Pay says {state}: {proposals}", highlight=False)
        if queried.retries:
            console.print(f"    retried {len(queried.retries)} time(s): {', '.join(queried.retries)}", highlight=False)
    for skipped in report.skipped:
        console.print(f"  skipped {skipped}", highlight=False)
    console.print(
        f"asked about {len(report.queried)} combine order(s): {report.proposed} proposal(s), {report.retried} retried"
        f" answer(s), {len(report.failed)} failed; confirm with: wxrecon exceptions resolve ID --note …",
        highlight=False,
    )
    raise typer.Exit(ExitCode.UNAVAILABLE if report.failed else EXIT_OK)


def main() -> None:  # the console script
    app()


if __name__ == "__main__":
    main()
