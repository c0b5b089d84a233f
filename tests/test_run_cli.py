"""`paraplan run` end to end (torchrun, gloo): the Measurement it writes, a crashing rank, and
checkpoint / resume continuing the loss curve exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from executor.shapes import one_node
from executor.train import TrainConfig, train_reference
from planner.measurement import Measurement
from planner.plan import Plan
from planner.transformer import load_transformer

DP2 = {"dp": 2, "tp": 1, "pp": 1, "micro_batch_size": 2, "global_batch_size": 8,
       "precision": "fp32"}
ZERO3 = {**DP2, "zero_stage": 3}


def paraplan(*args: str, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner.cli", "run", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def test_run_writes_a_measurement(tmp_path):
    r = paraplan("--plan", json.dumps(DP2), "--steps", "3", "--warmup", "1", "--out", "m.json",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    m = Measurement.model_validate_json((tmp_path / "m.json").read_text())
    assert m.world_size == 2 and len(m.losses) == 3 and len(m.step_times_s) == 2
    assert m.step_time_s > 0 and m.tokens_per_s == pytest.approx(8 * 64 / m.step_time_s)
    assert [r.rank for r in m.memory] == [0, 1]
    assert all(r.params_bytes > 0 and r.grads_bytes > 0 and r.optimizer_bytes > 0
               and r.activations_bytes > 0 for r in m.memory)
    assert m.environment.backend == "gloo" and m.environment.threads_per_rank >= 1
    ref, _ = train_reference(load_transformer("tiny"), Plan(**DP2), TrainConfig(), 3)
    np.testing.assert_allclose(m.losses, ref, rtol=1e-5)
    assert "step 3/3" in r.stdout and "measurement written" in r.stdout
    _compare_with_prediction(tmp_path)


def _compare_with_prediction(tmp_path) -> None:
    """`paraplan compare` on the run above: among prediction files of other plans it takes its
    own plan's; with --cluster it predicts on the cluster named (two that predict differently);
    the step error is against the measured median and the weights' bytes are exact."""
    (tmp_path / "two.json").write_text(one_node(2).model_dump_json())
    (tmp_path / "two_a100.json").write_text(one_node(2, "dgx_a100_80g").model_dump_json())

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "planner.cli", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    def predicted(plan: dict, cluster: str) -> float:
        r = cli("predict", "-t", "tiny", "-c", cluster, "--plan", json.dumps(plan), "--json")
        assert r.returncode == 0, r.stderr
        (tmp_path / f"pred_{len(list(tmp_path.glob('pred_*')))}.json").write_text(r.stdout)
        return json.loads(r.stdout)["step_time_s"]

    def row(*args: str) -> dict:
        r = cli("compare", *args, "--out", "cmp.json", "--html", "cmp.html")
        assert r.returncode == 0, r.stdout + r.stderr
        rows = json.loads((tmp_path / "cmp.json").read_text())["rows"]
        assert len(rows) == 1 and rows[0]["plan"] == Plan(**DP2).to_json_dict()
        assert rows[0]["memory_errors"]["weights"] == 0.0
        assert rows[0]["memory_errors"]["optimizer"] < 1e-3
        return rows[0]
    measured = Measurement.model_validate_json((tmp_path / "m.json").read_text()).step_time_s
    other, mine = predicted(ZERO3, "two.json"), predicted(DP2, "two.json")  # pred_0, pred_1
    assert other != mine
    got = row("pred_0.json", "pred_1.json", "m.json")["step_error"]
    assert got == pytest.approx(mine / measured - 1, rel=1e-9)
    a100 = predicted(DP2, "two_a100.json")
    assert a100 != pytest.approx(mine, rel=1e-3)
    for cluster, expected in (("two.json", mine), ("two_a100.json", a100)):
        got = row("m.json", "-c", cluster)["step_error"]
        assert got == pytest.approx(expected / measured - 1, rel=1e-9), cluster
    r = cli("compare", "m.json")
    assert r.returncode == 2 and "no prediction file has its plan" in r.stderr


def test_a_crashing_rank_ends_the_run_fast(tmp_path):
    t0 = time.monotonic()
    r = paraplan("--plan", json.dumps(DP2), "--steps", "20", "--warmup", "1", "--out", "m.json",
                 cwd=tmp_path, env={"PARAPLAN_FAIL_RANK": "1", "PARAPLAN_FAIL_STEP": "2"})
    wall = time.monotonic() - t0
    assert r.returncode == 1
    assert "rank 1 failed: RuntimeError: injected failure at step 2" in r.stdout
    assert not (tmp_path / "m.json").exists()  # no half-written result
    assert wall < 60, wall  # start-up ~12 s on 2 cores; the failure itself takes < 1 s


def test_resume_continues_the_loss_curve_exactly(tmp_path):
    plan = json.dumps(ZERO3)
    whole = paraplan("--plan", plan, "--steps", "5", "--warmup", "1", "--out", "whole.json",
                     cwd=tmp_path)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    killed = paraplan("--plan", plan, "--steps", "5", "--warmup", "1", "--save-every", "2",
                      "--checkpoint-dir", "ck", "--out", "killed.json", cwd=tmp_path,
                      env={"PARAPLAN_FAIL_RANK": "0", "PARAPLAN_FAIL_STEP": "4"})
    assert killed.returncode == 1 and "rank 0 failed" in killed.stdout
    assert json.loads((tmp_path / "ck" / "latest.json").read_text())["step"] == 2
    resumed = paraplan("--plan", plan, "--steps", "3", "--warmup", "1", "--resume", "ck",
                       "--out", "resumed.json", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    a = Measurement.model_validate_json((tmp_path / "whole.json").read_text())
    b = Measurement.model_validate_json((tmp_path / "resumed.json").read_text())
    assert len(b.losses) == 5
    assert b.losses == a.losses  # bit-for-bit: same data, weights and optimizer state


@pytest.mark.parametrize("plan,needle", [
    ({**DP2, "tp": 3}, "num_attention_heads 4 is not divisible by tp=3"),
    ({**DP2, "precision": "fp8"}, "precision fp8 needs a GPU"),
    ({**DP2, "zero": 1}, "field 'zero': unknown key"),
])
def test_bad_input(tmp_path, plan, needle):
    r = paraplan("--plan", json.dumps(plan), cwd=tmp_path)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
