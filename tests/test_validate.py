"""Issue 'validate': the model against published training runs. Fails if accuracy regresses."""

from __future__ import annotations

import hashlib
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
# sha256 of ../shared/validation/runs.json as canonical JSON (sorted keys): the version with a
# `framework` key on every run, which planner/validation/published_runs.json copies.
SHARED_RUNS_SHA256 = "e8bfe46881275df2f4bd0b112bb01f12fe4c4abb9f1db01e5763a2b1676f132d"


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


def _canonical_sha256(path: Path) -> str:
    """Digest of a JSON file's content (sorted keys), independent of its whitespace."""
    text = json.dumps(json.loads(path.read_text()), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def test_packaged_copy_matches_shared():
    """The packaged copy is the shared file it was taken from: checked against that file's
    recorded digest always (so the check runs where ../shared is absent, as in an installed
    package), and against ../shared itself where present (so a changed shared file fails here
    until the copy is refreshed)."""
    assert _canonical_sha256(default_runs_path()) == SHARED_RUNS_SHA256
    if SHARED.exists():
        assert json.loads(default_runs_path().read_text()) == json.loads(SHARED.read_text())


def test_every_run_names_its_framework():
    """../shared/validation/README.md: every run's `framework` names its stack; the loader keeps
    it (the held-out PTD-P rows ran on the same Megatron-LM as Table 1)."""
    held = default_runs_path().with_name("held_out_runs.json")
    frameworks = {r.name: r.framework for r in load_runs() + load_runs(held)}
    assert len(frameworks) == 31
    assert set(frameworks.values()) == {"megatron-lm-2021", "deepspeed"}, frameworks
    assert [n for n, f in frameworks.items() if f == "deepspeed"] == [
        n for n in frameworks if "-t2-zero3-" in n]


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
