"""validate-local keeps going past a failing plan: predicted_vs_measured.json is rewritten as
each plan run lands, the failed plan is listed with its rank, round and error, kept out of the
rows and the statistics and out of the later rounds, and the command says so (gloo, 2 ranks,
tiny, a few steps, 2 rounds of real launches)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from executor.shapes import one_node
from executor.validate_local import validate_local
from planner.transformer import load_transformer

FAIL_SECOND = {"PARAPLAN_FAIL_PLAN": "1", "PARAPLAN_FAIL_RANK": "1", "PARAPLAN_FAIL_STEP": "2",
               "OMP_NUM_THREADS": "1"}


def test_a_failing_plan_is_recorded_and_the_rest_run(tmp_path, monkeypatch):
    for k, v in FAIL_SECOND.items():
        monkeypatch.setenv(k, v)
    path = tmp_path / "predicted_vs_measured.json"
    seen = []

    def echo(line: str) -> None:  # after each plan: what the file on disk holds by then
        if line.startswith("  plan "):
            d = json.loads(path.read_text())
            seen.append((len(d["rows"]), len(d["failed"]), d["complete"]))
    data = validate_local(load_transformer("tiny"), one_node(2), 8, 3, 1, 1, tmp_path, 3, echo,
                          timeout_s=30, rounds=2)
    # round 1 runs plans 0, 1 (fails), 2; round 2 runs 2, 0 (rotated by 1; the failed plan 1
    # runs no more)
    assert seen == [(1, 0, False), (1, 1, False), (2, 1, False), (2, 1, False), (2, 1, False)]
    on_disk = json.loads(path.read_text())
    assert on_disk["complete"] and on_disk["plans_total"] == 3 and on_disk["rounds_done"] == 2
    assert [(f["error"], f["round"]) for f in on_disk["failed"]] == [
        ("rank 1 failed: RuntimeError: injected failure at step 2", 1)]
    assert on_disk["failed"][0]["plan"] not in [r["plan"] for r in on_disk["rows"]]
    assert on_disk["summary"]["plans"] == 2 and data["summary"] == on_disk["summary"]
    for r in on_disk["rows"]:
        assert len(r["measured_rounds_s"]) == 2 and all(v > 0 for v in r["measured_rounds_s"])
        assert r["measured_step_time_s"] == r["measured"]["step_time_s"] > 0
        band = r["measured_spread_s"]
        assert band["min"] <= band["q25"] <= band["q75"] <= band["max"]
        assert len(r["measured"]["step_times_s"]) == 2 * 2  # 2 timed steps in each round
    assert [r["search_rank"] for r in on_disk["rows"]] == [0, 2]
    assert on_disk["summary"]["machine_noise_plans"] == 2
    assert (tmp_path / "report.html").is_file()


def test_the_command_lists_failed_plans_and_exits_1(tmp_path):
    (tmp_path / "two.json").write_text(one_node(2).model_dump_json())
    r = subprocess.run([sys.executable, "-m", "planner.cli", "validate-local", "--profile",
                        "two.json", "--limit", "2", "--steps", "3", "--warmup", "1",
                        "--threads", "1", "--timeout", "30", "--rounds", "1", "--out-dir", "out"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=240,
                       env={**os.environ, "COLUMNS": "200", **FAIL_SECOND})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "failed: " in r.stdout and "injected failure at step 2" in r.stdout
    assert "1 of 2 plans ran, 1 failed, 1 of 1 rounds done" in r.stdout
    assert "budget: 2 plans x 1 rounds x" in r.stdout
    d = json.loads((tmp_path / "out" / "predicted_vs_measured.json").read_text())
    assert len(d["rows"]) == 1 and len(d["failed"]) == 1
