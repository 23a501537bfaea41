"""``wxrecon``: the command line of the reconciliation pipeline.

Exit codes (so a scheduler or a shell script can tell what a run found):

====  ==========================================================
0     ran; nothing needs attention (the demo: found exactly what it injected)
1     ran; exceptions were found (the day's report lists them)
2     the command line itself was wrong (unknown option, bad date)
3     a bill is late, or integrity failed (hash / summary / data check)
4     the settings are missing or malformed (the message names the setting)
5     the warehouse is busy (another run, or a reader holding it) beyond the wait
====  ==========================================================
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from flows.money import fmt_yuan

app = typer.Typer(add_completion=False, no_args_is_help=True, help="WeChat Pay combine-order reconciliation")
console = Console()

EXIT_OK, EXIT_EXCEPTIONS, EXIT_ATTENTION, EXIT_SETTINGS, EXIT_BUSY = 0, 1, 3, 4, 5

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="settings TOML (else WXRECON_CONFIG / env)")]


def _quiet_prefect() -> None:
    """Offline-friendly Prefect defaults, unless the user chose otherwise (shared/notes/runtime.md §2)."""
    for name, value in (
        ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
        ("DO_NOT_TRACK", "1"),
        ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"),
        ("PREFECT_LOGGING_LEVEL", "WARNING"),
    ):
        os.environ.setdefault(name, value)


def _settings(config: Path | None):
    from flows.settings import SettingsError, load_settings

    try:
        return load_settings(config)
    except SettingsError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_SETTINGS) from None


def _exit_code(outcome) -> int:
    if outcome.late or outcome.integrity:
        return EXIT_ATTENTION
    return EXIT_EXCEPTIONS if outcome.exceptions else EXIT_OK


def _print_exceptions(rows: list[dict], title: str) -> None:
    """One line per exception with its amounts, then its explanation, readable in 80 columns."""
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
        console.print(f"  [{colour}]{row['class']}[/{colour}]  {row['mchid']}  {key or '?'}  {amounts}")
        if row.get("detail"):
            console.print(f"      {row['detail']}", style="dim", overflow="fold")


def _print_outcome(outcome) -> None:
    console.print(
        f"[bold]{outcome.bill_date}[/bold]: {outcome.exceptions} exceptions, {outcome.pending} pending, "
        f"{fmt_yuan(outcome.exposure_fen)} at stake; loaded {', '.join(outcome.loaded) or 'no bill'}"
        + (f"; no trades: {', '.join(outcome.empty)}" if outcome.empty else "")
    )
    if outcome.opened or outcome.closed:
        console.print(f"since the previous run: {len(outcome.opened)} opened, {len(outcome.closed)} closed")
        for item in outcome.opened[:10]:
            console.print(f"  opened {item}")
        for item in outcome.closed[:10]:
            console.print(f"  closed {item}")
    for problem in outcome.late:
        console.print(f"[yellow]LATE[/yellow] {problem}")
    for problem in outcome.integrity:
        console.print(f"[red]INTEGRITY[/red] {problem}")
    if outcome.alert is not None:
        state = "sent" if outcome.alert_sent else "NOT sent"
        console.print(f"alert {state}: {outcome.alert.title}")


def _run_with_progress(run):
    """Run a flow call while drawing one progress bar per bill download."""
    import flows.nightly as nightly

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
    ) as progress:
        bars: dict[str, int] = {}
        steps = progress.add_task("nightly run", total=len(nightly.STEPS))

        def hook(what: str, value: int) -> None:
            if what.startswith("step: "):
                progress.update(steps, completed=value - 1, description=what.removeprefix("step: "))
                return
            if what not in bars:
                bars[what] = progress.add_task(f"bill {what}", total=None)
            progress.update(bars[what], completed=value)

        nightly.progress_hook = hook
        try:
            return run()
        finally:
            nightly.progress_hook = None


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(help="where the demo leaves its warehouse, archive and logs")] = Path("var"),
) -> None:
    """Run the whole product offline: simulator, receiver, a business day, the nightly flow, the alert."""
    _quiet_prefect()
    from flows.demo import run_demo

    result = run_demo(data_dir, say=console.print)
    _print_outcome(result.outcome)
    _print_exceptions(result.exceptions, f"Exceptions of {result.bill_date}")
    for alert in result.alerts:
        console.print(f"[bold]alert received by the local webhook[/bold]: {alert.get('title')}")
        console.print(alert.get("message", ""))
    verdict = "found exactly the injected discrepancies" if result.as_injected else "did NOT find what it injected"
    console.print(f"demo {verdict}. Warehouse: {result.data_dir / 'warehouse.duckdb'}; notebooks: ./scripts/notebooks")
    raise typer.Exit(EXIT_OK if result.as_injected else EXIT_EXCEPTIONS)


@app.command()
def run(
    day: Annotated[str | None, typer.Option("--date", help="bill day YYYY-MM-DD (default: yesterday, Beijing)")] = None,
    config: ConfigOption = None,
) -> None:
    """Reconcile one day now (the nightly flow, run once)."""
    _quiet_prefect()
    settings = _settings(config)
    from flows.nightly import reconcile_day, using
    from flows.warehouse import RunInProgress, WarehouseBusy

    bill_date = _date(day) if day else None
    try:
        with using(settings):
            outcome = _run_with_progress(lambda: reconcile_day(bill_date))
    except (RunInProgress, WarehouseBusy) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_BUSY) from None
    _print_outcome(outcome)
    raise typer.Exit(_exit_code(outcome))


@app.command()
def backfill(
    start: Annotated[str, typer.Option(help="first day YYYY-MM-DD")],
    end: Annotated[str, typer.Option(help="last day YYYY-MM-DD (inclusive)")],
    config: ConfigOption = None,
) -> None:
    """Reconcile a range of days in date order (re-running a day replaces it)."""
    _quiet_prefect()
    settings = _settings(config)
    from flows.nightly import backfill as backfill_flow
    from flows.nightly import using

    with using(settings):
        outcomes = _run_with_progress(lambda: backfill_flow(_date(start), _date(end)))
    for outcome in outcomes:
        _print_outcome(outcome)
    raise typer.Exit(max((_exit_code(o) for o in outcomes), default=EXIT_OK))


@app.command()
def report(
    day: Annotated[str, typer.Option("--date", help="bill day YYYY-MM-DD")],
    config: ConfigOption = None,
) -> None:
    """Print a reconciled day's summary table and its exceptions (read-only)."""
    settings = _settings(config)
    from flows.report import control_totals, exceptions_of_day, summary_of_day

    bill_date = _date(day)
    summary = summary_of_day(settings.warehouse_path, bill_date)
    if not summary:
        console.print(f"{bill_date} has not been reconciled (no items in {settings.warehouse_path})")
        raise typer.Exit(EXIT_ATTENTION)
    table = Table(title=f"Reconciliation {bill_date}")
    for column in ("merchant", "kind", "class", "items", "bill", "local", "at stake"):
        table.add_column(column, justify="right" if column in ("items", "bill", "local", "at stake") else "left")
    for row in summary:
        style = "" if row["class"] == "matched" else ("yellow" if row["state"] == "pending" else "red")
        table.add_row(
            row["mchid"],
            row["item_kind"],
            f"[{style}]{row['class']}[/{style}]" if style else row["class"],
            str(row["items"]),
            fmt_yuan(row["bill_fen"]),
            fmt_yuan(row["local_fen"]),
            fmt_yuan(row["exposure_fen"]),
        )
    console.print(table)
    totals = Table(title="Control totals (fen → yuan)")
    for column in (
        "merchant",
        "summary rows",
        "detail rows",
        "summary",
        "detail",
        "local paid",
        "summary-detail",
        "bill-local",
    ):
        totals.add_column(column, justify="left" if column == "merchant" else "right")
    for row in control_totals(settings.warehouse_path, bill_date):
        totals.add_row(
            row["mchid"],
            str(row["summary_rows"]),
            str(row["detail_rows"]),
            fmt_yuan(row["summary_order_fen"], empty="-"),
            fmt_yuan(row["detail_order_fen"], empty="-"),
            fmt_yuan(row["local_paid_fen"], empty="-"),
            fmt_yuan(row["summary_minus_detail_fen"], empty="-"),
            fmt_yuan(row["bill_minus_local_fen"], empty="-"),
        )
    console.print(totals)
    exceptions = [r for r in exceptions_of_day(settings.warehouse_path, bill_date) if r["state"] != "pending"]
    if exceptions:
        _print_exceptions(exceptions, "Exceptions")
    raise typer.Exit(EXIT_EXCEPTIONS if exceptions else EXIT_OK)


@app.command()
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
            merchants[merchant.mchid] = ReceiverMerchant(verifier, merchant.api_v3_key.get_secret_value(), refresh)
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
    port: Annotated[int, typer.Option()] = 8421,
    state_dir: Annotated[Path, typer.Option(help="merchant test credentials are written here")] = Path("var/sim"),
    merchants: Annotated[int, typer.Option()] = 3,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Run the offline WeChat Pay simulator on loopback (same as python -m wxpay.sim serve)."""
    from wxpay.sim.__main__ import main

    main(
        [
            "serve",
            "--port",
            str(port),
            "--state-dir",
            str(state_dir),
            "--merchants",
            str(merchants),
            "--seed",
            str(seed),
        ]
    )


@app.command()
def deploy(config: ConfigOption = None) -> None:
    """Serve the nightly deployment: reconcile yesterday at 22:30 Asia/Shanghai (settings.schedule_*)."""
    _quiet_prefect()
    settings = _settings(config)
    from flows.deploy import serve_nightly

    console.print(f"serving the nightly deployment: cron '{settings.schedule_cron}' in {settings.schedule_timezone}")
    serve_nightly(settings, config)


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a date (YYYY-MM-DD)") from None


def main() -> None:  # the console script
    app()


if __name__ == "__main__":
    main()
