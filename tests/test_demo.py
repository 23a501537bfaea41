"""The offline demo: it must find exactly the discrepancies it injects, and leave a warehouse behind."""

from __future__ import annotations

import duckdb
import pytest

from flows.demo import INJECTED, prepare, run_demo

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def test_the_demo_finds_exactly_what_it_injects(tmp_path):
    result = run_demo(tmp_path / "var", say=lambda *a, **k: None)
    assert {e["class"] for e in result.exceptions} == INJECTED
    assert result.as_injected
    assert result.outcome.alert_sent
    assert len(result.alerts) == 2  # the run's, then the re-run's after one exception was resolved
    message = result.alerts[0]["message"]
    for cls in INJECTED:
        assert cls in message
    # the demo ends by resolving the amount mismatch through the workbench; the re-run's alert counts one fewer
    assert result.resolved["class"] == "amount_mismatch"
    assert (result.outcome.exceptions, result.rerun.exceptions) == (4, 3)
    assert "4 exceptions" in result.alerts[0]["title"]
    assert "3 exceptions" in result.alerts[1]["title"]
    assert "amount_mismatch" not in result.alerts[1]["message"]
    assert "Open backlog: 3 exception(s)" in result.alerts[1]["message"]
    con = duckdb.connect(str(tmp_path / "var" / "warehouse.duckdb"), read_only=True)
    try:
        audit = con.execute(
            "select action, actor, resolution, class from marts.mart_exception_audit where action = 'resolved'"
        ).fetchall()
        assert audit == [("resolved", "demo", "explained", "amount_mismatch")]
        assert con.execute(
            "select work_state from marts.mart_exceptions where exception_id = ?", [result.resolved["exception_id"]]
        ).fetchone() == ("resolved",)
    finally:
        con.close()
    assert (tmp_path / "var" / "warehouse.duckdb").exists()
    assert any((tmp_path / "var" / "archive").rglob("*.csv.gz"))
    assert any((tmp_path / "var" / "notifications").rglob("*.jsonl"))


def test_the_demo_never_wipes_a_folder_it_did_not_create(tmp_path):
    (tmp_path / "precious.txt").write_text("real data")
    with pytest.raises(FileExistsError, match="did not write"):
        prepare(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "real data"
