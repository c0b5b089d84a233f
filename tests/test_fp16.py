"""fp16 execution (autocast + dynamic loss scaling, executor/precision.py) on 2 gloo processes:
`paraplan run` trains dp2, ZeRO-3 and tp2 plans (loss falls, no inf/NaN, no skipped steps at the
default scale); a huge initial scale makes steps skip and the Measurement count them; and an
overflow on one rank only (an inf put into rank 1's gradient shard) skips the update on every
rank: the parameters after that step equal those after the step before, on every plan."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from executor.launch import check_runnable, visible_gpus
from executor.local import run_plans
from executor.train import TrainConfig
from planner.measurement import Measurement
from planner.plan import Plan
from planner.schema import InputError
from planner.transformer import load_transformer

BASE = {"micro_batch_size": 2, "global_batch_size": 8, "precision": "fp16"}
PLANS = {
    "dp2": {"dp": 2, "tp": 1, "pp": 1, **BASE},
    "zero3": {"dp": 2, "tp": 1, "pp": 1, "zero_stage": 3, **BASE},
    "tp2": {"dp": 1, "tp": 2, "pp": 1, "sequence_parallel": True, **BASE},
}
STEPS = 8


def _data(tmp: Path) -> Path:
    """Repeated text read as bytes: learnable in a few steps (synthetic tokens are uniform)."""
    path = tmp / "text.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    return path


def _run(tmp: Path, plan: dict, env: dict | None = None) -> tuple[Measurement, str]:
    r = subprocess.run(
        [sys.executable, "-m", "planner.cli", "run", "--plan", json.dumps(plan), "--steps",
         str(STEPS), "--warmup", "1", "--data", str(_data(tmp)), "--out", "m.json",
         "--threads", "1"], cwd=tmp, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert r.returncode == 0, r.stdout + r.stderr
    return Measurement.model_validate_json((tmp / "m.json").read_text()), r.stdout


@pytest.mark.parametrize("key", list(PLANS))
def test_fp16_run_trains(tmp_path: Path, key: str) -> None:
    m, _ = _run(tmp_path, PLANS[key])
    assert m.plan.precision == "fp16" and len(m.losses) == STEPS
    assert all(math.isfinite(x) for x in m.losses)
    assert m.losses[-1] < m.losses[0] - 0.5, m.losses  # ~6.29 -> ~4.2 in 8 steps
    assert m.skipped_steps == 0  # the default 2**16 does not overflow this model


def test_forced_overflow_is_counted(tmp_path: Path) -> None:
    m, out = _run(tmp_path, PLANS["zero3"], {"PARAPLAN_FP16_INIT_SCALE": str(2.0 ** 40)})
    assert m.skipped_steps is not None and m.skipped_steps >= 3
    assert "fp16 overflow" in out
    assert all(math.isfinite(x) for x in m.losses)  # forward losses stay finite: only grads blow


def test_overflow_on_one_rank_skips_everywhere(monkeypatch) -> None:
    """Rank 1 alone sees an inf (in its FSDP shard, its tp shard, its DDP gradient, its pipeline
    stage) at step 2: if only rank 1 skipped, rank 0's part would move and the whole parameters
    would differ. (pp2 is the case a rank-local GradScaler gets wrong: a plain GradScaler on
    FSDP or tp DTensor gradients of one mesh reduces the flag over that mesh already.)"""
    spec = load_transformer("tiny")
    plans = {**PLANS, "pp2": {"dp": 1, "tp": 1, "pp": 2, **BASE}}
    jobs = [(k, spec, Plan(**p)) for k, p in plans.items()]
    cfg = {"warmup": 0, "lr": 3e-3}
    one = run_plans(2, jobs, TrainConfig(steps=1, **cfg), want_params=True)
    monkeypatch.setenv("PARAPLAN_INF_GRAD_RANK", "1")
    monkeypatch.setenv("PARAPLAN_INF_GRAD_STEP", "2")
    two = run_plans(2, jobs, TrainConfig(steps=2, **cfg), want_params=True)
    for key in plans:
        assert one[key]["params"] == two[key]["params"], key
        assert two[key]["losses"][0] == one[key]["losses"][0]


@pytest.mark.skipif(visible_gpus() > 0, reason="the CPU refusal")
def test_fp8_refused_on_cpu() -> None:
    with pytest.raises(InputError, match="needs a GPU and torchao"):
        check_runnable(Plan(**{**PLANS["dp2"], "precision": "fp8"}))
