"""`paraplan run`'s guards for a new user: it trains the transformer the plan file was searched
for (or says what it does instead), refuses a world too large for this CPU before forking
anything, and --max-seconds bounds a run that hangs without printing (gloo, 2 ranks, tiny)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from executor.commands.run import choose_transformer
from executor.launch import check_runnable, cpu_rank_limit, run_bounded, visible_gpus
from planner.measurement import Measurement
from planner.plan import Plan
from planner.schema import InputError
from planner.transformer import load_transformer

DP2 = {"dp": 2, "tp": 1, "pp": 1, "micro_batch_size": 2, "global_batch_size": 8,
       "precision": "fp32"}
TINY = load_transformer("tiny")
# A model only the plan file names: one layer fewer than tiny, under its own name.
RECORDED = TINY.model_copy(update={"name": "tiny-searched", "num_layers": TINY.num_layers - 1})


def paraplan(*args: str, cwd, env=None, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner.cli", "run", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1",
                               **(env or {})})


def test_run_trains_the_transformer_the_plan_file_records(tmp_path):
    (tmp_path / "best_plan.json").write_text(json.dumps(
        {**DP2, "transformer": RECORDED.model_dump(), "cluster": "dgx_h100"}))
    r = paraplan("--plan", "best_plan.json", "--steps", "2", "--warmup", "1", "--out", "m.json",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "running tiny-searched (recorded in the plan file) on 2 processes" in r.stdout
    assert Measurement.model_validate_json((tmp_path / "m.json").read_text()).transformer == \
        RECORDED


def test_which_model_and_why():
    recorded = {"transformer": RECORDED.model_dump()}
    spec, source, note = choose_transformer("tiny", recorded, "best_plan.json")
    assert spec == TINY and source == "-t tiny"
    assert note == ("note: the plan was searched for tiny-searched; running tiny from -t tiny "
                    "instead")
    assert choose_transformer(None, recorded, "best_plan.json") == (
        RECORDED, "recorded in the plan file", None)
    assert choose_transformer(None, {}, "p.json") == (
        TINY, "the default: the plan records no transformer, no -t", None)
    assert choose_transformer("tiny", {"transformer": TINY.model_dump()}, "p.json")[2] is None


def test_a_malformed_recorded_transformer_is_one_line(tmp_path):
    bad = {**RECORDED.model_dump(), "num_layers": 0}
    (tmp_path / "best_plan.json").write_text(json.dumps({**DP2, "transformer": bad}))
    r = paraplan("--plan", "best_plan.json", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "plan best_plan.json: transformer: field 'num_layers'" in r.stderr, r.stderr


def _too_big() -> Plan:
    """A data-parallel plan with more ranks than this machine would start."""
    world = 2 * max(cpu_rank_limit(os.cpu_count() or 1), visible_gpus())
    return Plan(dp=world, tp=1, pp=1, micro_batch_size=1, global_batch_size=world,
                precision="fp32")


def test_a_world_too_big_for_this_machine_is_refused_before_forking(tmp_path):
    plan = _too_big()
    t0 = time.monotonic()
    r = paraplan("--plan", plan.model_dump_json(), "--steps", "1", "--warmup", "0",
                 "--max-seconds", "60", cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    what = "GPUs" if visible_gpus() else "processes"
    assert f"plan needs {plan.world_size} {what} (dp {plan.dp} x tp 1 x pp 1 x cp 1)" in r.stderr
    assert "running" not in r.stdout and time.monotonic() - t0 < 30
    if not visible_gpus():
        assert "--allow-oversubscribe" in r.stderr
        check_runnable(plan, allow_oversubscribe=True)  # asked for: allowed
    with pytest.raises(InputError):
        check_runnable(plan)


def _alive_with(needle: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and needle in (d / "cmdline").read_text():
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


def test_max_seconds_bounds_a_silent_hang(tmp_path):
    """Rank 1 sleeps 90 s in step 2 without a word (rank 0 waits in a collective that may wait
    90 s): --max-seconds 25 must end the run, every rank included, by the clock."""
    t0 = time.monotonic()
    r = paraplan("--plan", json.dumps(DP2), "--steps", "4", "--warmup", "1", "--timeout", "90",
                 "--max-seconds", "25", "--out", "m.json", cwd=tmp_path, timeout=80,
                 env={"PARAPLAN_STALL_RANK": "1", "PARAPLAN_STALL_STEP": "2",
                      "PARAPLAN_STALL_S": "90"})
    wall = time.monotonic() - t0
    assert r.returncode == 1, r.stdout + r.stderr
    assert "run stopped after --max-seconds 25 s without finishing" in r.stdout
    assert 25 <= wall < 60, wall
    work = re.search(r"\(log: (\S+)/log\.txt\)", r.stdout).group(1)
    assert _alive_with(work) == []  # torchrun and both ranks are gone
    assert not (tmp_path / "m.json").exists()


def test_the_clock_bounds_a_child_that_prints_nothing(tmp_path):
    """The launcher's wait itself, on a child that sleeps without output."""
    t0 = time.monotonic()
    code = run_bounded([sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ),
                       tmp_path / "log.txt", 3, None)
    assert code == -1 and time.monotonic() - t0 < 20
