"""The offline demo: it must find exactly the discrepancies it injects, and leave a warehouse behind."""

from __future__ import annotations

import pytest

from flows.demo import INJECTED, prepare, run_demo

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def test_the_demo_finds_exactly_what_it_injects(tmp_path):
    result = run_demo(tmp_path / "var", say=lambda *a, **k: None)
    assert {e["class"] for e in result.exceptions} == INJECTED
    assert result.as_injected
    assert result.outcome.alert_sent
    assert len(result.alerts) == 1
    message = result.alerts[0]["message"]
    for cls in INJECTED:
        assert cls in message
    assert (tmp_path / "var" / "warehouse.duckdb").exists()
    assert any((tmp_path / "var" / "archive").rglob("*.csv.gz"))
    assert any((tmp_path / "var" / "notifications").rglob("*.jsonl"))


def test_the_demo_never_wipes_a_folder_it_did_not_create(tmp_path):
    (tmp_path / "precious.txt").write_text("real data")
    with pytest.raises(FileExistsError, match="did not write"):
        prepare(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "real data"
