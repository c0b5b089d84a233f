"""The two launch harnesses time the same step the same way: `paraplan run`'s torchrun launch
(executor/launch.py, executor/worker.py) and the forked world that validate-local, calibrate
and the tests use (executor/local.py). One rank is made to stall inside one timed step; both
must train the same losses, report the same timed steps with the stall in the same place (the
slowest rank's time), and count the same bytes per rank (gloo, 2 ranks, tiny, 4 steps)."""

from __future__ import annotations

import numpy as np
import pytest

from executor.launch import launch
from executor.local import run_plans
from executor.train import TrainConfig
from executor.validate_local import measured
from planner.plan import Plan
from planner.transformer import load_transformer

DP2 = Plan(dp=2, tp=1, pp=1, micro_batch_size=2, global_batch_size=8, precision="fp32")
STALL_S = 0.8
# Rank 1 sleeps inside step 3's timed region: the second of the timed steps 2, 3, 4.
STALL = {"PARAPLAN_STALL_RANK": "1", "PARAPLAN_STALL_STEP": "3", "PARAPLAN_STALL_S": str(STALL_S),
         "OMP_NUM_THREADS": "1"}
COUNTED = ("params_bytes", "grads_bytes", "optimizer_bytes", "activations_bytes")


@pytest.fixture(scope="module")
def both() -> tuple:
    spec = load_transformer("tiny")
    run = launch(DP2, spec, None, steps=4, warmup=1, threads=1, echo=None, extra_env=STALL,
                 timeout_s=60, max_seconds=180)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in STALL.items():
            mp.setenv(k, v)
        raw = run_plans(2, [("dp2", spec, DP2)], TrainConfig(steps=4, warmup=1), threads=1,
                        timeout_s=60)["dp2"]
    return run, raw, measured(raw, 1)


def test_same_losses(both):
    run, raw, _ = both
    np.testing.assert_allclose(run.losses, raw["losses"], rtol=1e-6)


def test_same_timed_steps_with_the_stall_in_the_same_place(both):
    run, _, local = both
    for times in (run.step_times_s, local["step_times_s"]):
        assert len(times) == 3, times  # the warm-up step dropped by both
        assert times[1] >= STALL_S, times  # the stall is inside what both time
        assert max(times[0], times[2]) < STALL_S, times


def test_same_bytes_per_rank_and_both_read_the_peak_rss(both):
    run, _, local = both
    assert [m.rank for m in run.memory] == [m["rank"] for m in local["memory"]] == [0, 1]
    for a, b in zip(run.memory, local["memory"]):
        assert {k: getattr(a, k) for k in COUNTED} == {k: b[k] for k in COUNTED}
        assert a.peak_rss_bytes and b["peak_rss_bytes"]  # both restart it at the timed steps
    assert run.environment.threads_per_rank == 1
