"""Issue 'validate': the model against published training runs. Fails if accuracy regresses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.cli import main
from planner.schema import InputError
from planner.validation import compare, default_runs_path, load_runs, summary

# Recorded in docs/accuracy.md; raise only together with that file.
RECORDED_MAPE_PCT = 5.9
MARGIN_PCT = 0.5
SHARED = Path(__file__).resolve().parents[2] / "shared" / "validation" / "runs.json"


@pytest.fixture(scope="module")
def comparisons():
    return compare(load_runs())


def test_mean_error_does_not_regress(comparisons):
    s = summary(comparisons)
    assert s["count"] == 25
    assert s["mape_pct"] <= RECORDED_MAPE_PCT + MARGIN_PCT, s
    assert s["mape_pct"] <= 8.0  # the bar


def test_no_run_is_off_by_more_than_20_percent(comparisons):
    worst = max(comparisons, key=lambda c: abs(c.error))
    assert abs(worst.error) <= 0.20, (worst.run.name, worst.error)


def test_every_published_run_fits_in_memory(comparisons):
    """They ran, so the memory model must not call them impossible."""
    assert [c.run.name for c in comparisons if not c.prediction["fits"]] == []


def test_held_out_runs_stay_accurate():
    """Table 2 PTD-P rows, never used to choose anything (docs/accuracy.md)."""
    held = Path(default_runs_path()).with_name("held_out_runs.json")
    s = summary(compare(load_runs(held)))
    assert s["count"] == 6 and s["max_abs_error_pct"] <= 10.0, s


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/validation not present")
def test_packaged_copy_matches_shared():
    assert json.loads(default_runs_path().read_text()) == json.loads(SHARED.read_text())


def test_cli_validate_json_and_table(capsys, tmp_path):
    assert main(["validate", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["count"] == 25 and len(out["runs"]) == 25
    assert {"predicted_step_time_s", "measured_step_time_s", "error_pct"} <= set(out["runs"][0])
    assert main(["validate"]) == 0
    assert "mean absolute error" in capsys.readouterr().out


def test_bad_runs_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "runs.json"
    bad.write_text(json.dumps([{"name": "x", "transformer": {}, "cluster": "dgx_h100",
                                "num_nodes": 1, "plan": {}, "measured_step_time_s": -1}]))
    with pytest.raises(InputError, match="measured_step_time_s"):
        load_runs(bad)
