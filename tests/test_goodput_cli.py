"""Goodput in the CLI: `paraplan estimate` keys and their consistency, `paraplan search
--goodput`, bad override flags (one line, exit 2), and checkpoint bytes from the plan's sharding
(planner/money.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from planner.hardware import load_cluster
from planner.money import GoodputSettings, checkpoint_bytes, goodput_inputs, stall_and_interval
from planner.plan import Plan
from planner.plan_arrays import PlanArrays
from planner.schema import InputError
from planner.transformer import load_transformer

KEYS = ("goodput_fraction", "goodput_fraction_range", "checkpoint_interval_s",
        "checkpoint_stall_s", "checkpoint_bytes_per_node", "days_with_losses",
        "days_with_losses_range", "gpu_hours_with_losses", "cost_usd_with_losses",
        "cost_usd_with_losses_range", "interruptions", "interruptions_range", "async_checkpoint")


def cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def estimate_json(tmp_path_factory) -> dict:
    r = cli("estimate", "-t", "llama3-8b", "--tokens", "1T", "--gpus", "h100",
            "--num-gpus", "64,512", "--html", "-", "--json", cwd=tmp_path_factory.mktemp("e"))
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout[r.stdout.index("{"):])


def test_estimate_json_has_consistent_goodput_keys(estimate_json):
    opts = estimate_json["options"]
    assert len(opts) == 2 and all(o["fits"] for o in opts)
    for o in opts:
        assert all(k in o for k in KEYS), [k for k in KEYS if k not in o]
        assert 0 < o["goodput_fraction"] <= 1
        lo, hi = o["goodput_fraction_range"]
        assert 0 < lo <= o["goodput_fraction"] <= hi <= 1
        assert o["days_with_losses"] >= o["days"]
        assert o["days_with_losses"] == pytest.approx(o["days"] / o["goodput_fraction"])
        a, b = o["days_with_losses_range"]
        assert a <= o["days_with_losses"] <= b
        assert o["gpu_hours_with_losses"] == pytest.approx(
            o["days_with_losses"] * 24 * o["num_gpus"])
        assert o["cost_usd_with_losses"] == pytest.approx(
            o["gpu_hours_with_losses"] * o["rent_per_gpu_hour_usd"])
        c0, c1 = o["cost_usd_with_losses_range"]
        assert c0 <= o["cost_usd_with_losses"] <= c1
        assert o["checkpoint_interval_s"] >= o["step_time_s"]  # checkpoints between steps
        assert o["checkpoint_stall_s"] > 0 and o["checkpoint_bytes_per_node"] > 0
    small, large = sorted(opts, key=lambda o: o["num_gpus"])
    assert large["goodput_fraction"] < small["goodput_fraction"]
    inputs = estimate_json["goodput_inputs"]["dgx_h100"]
    assert inputs["storage"] == "parallel_fs" and inputs["restart_s"] == 660.0


def test_estimate_overrides_reach_the_model(tmp_path):
    r = cli("estimate", "-t", "llama3-8b", "--tokens", "1T", "--gpus", "h100", "--num-gpus",
            "64", "--html", "-", "--json", "--mtbf-gpu-hours", "1000", "--restart-minutes", "30",
            "--checkpoint-every", "100", "--storage", "local_nvme", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(r.stdout[r.stdout.index("{"):])
    o, g = d["options"][0], d["goodput_inputs"]["dgx_h100"]
    assert g["failures_per_gpu_hour"] == [1e-3] * 3 and g["restart_s"] == 1800.0
    assert g["storage"] == "local_nvme" and g["write_GBps"] == 30.4
    assert o["checkpoint_interval_s"] == pytest.approx(100 * o["step_time_s"])
    assert o["goodput_fraction_range"][0] == pytest.approx(o["goodput_fraction"], rel=1e-12)


def test_estimate_table_shows_losses(tmp_path):
    r = cli("estimate", "-t", "llama3-8b", "--tokens", "1T", "--gpus", "h100", "--num-gpus",
            "64", "--html", "e.html", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    for needle in ("goodput %", "ckpt every", "stall", "days w/ losses", "cost w/ losses"):
        assert needle in r.stdout, needle
    assert "lost: failures, restarts, checkpoint stalls" in (tmp_path / "e.html").read_text()


@pytest.mark.parametrize("flag, value", [
    ("--mtbf-gpu-hours", "-5"), ("--checkpoint-gbps", "0"), ("--restart-minutes", "0"),
    ("--checkpoint-every", "0"), ("--mtbf-gpu-hours", "nan")])
def test_bad_overrides_one_line_exit_2(tmp_path, flag, value):
    r = cli("estimate", "-t", "tiny", "--tokens", "1B", "--gpus", "h100", "--num-gpus", "8",
            "--html", "-", flag, value, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and "> 0" in lines[0], r.stderr


def test_unknown_storage_one_line_exit_2(tmp_path):
    r = cli("search", "--goodput", "--storage", "tape", "--out", "-", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "unknown storage preset 'tape'" in r.stderr


def test_search_goodput_ranks_by_adjusted_step_time(tmp_path):
    r = cli("search", "-t", "llama3-70b", "-n", "8", "--stack", "fsdp", "--goodput", "--json",
            "--top", "20", "--out", "-", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(r.stdout[r.stdout.index("{"):])
    assert d["ranked_by"] == "goodput_step_time_s"
    top = d["top"]
    adj = [t["goodput_step_time_s"] for t in top]
    assert adj == sorted(adj)
    for t in top:
        assert t["goodput_step_time_s"] == pytest.approx(t["step_time_s"] / t["goodput_fraction"])
        assert 0 < t["goodput_fraction"] < 1 and t["checkpoint_stall_s"] > 0


# ---- checkpoint bytes from the plan's sharding ---------------------------------------------

def _plans(**kw) -> PlanArrays:
    base = {"dp": 8, "tp": 1, "pp": 1, "micro_batch_size": 1, "global_batch_size": 64}
    return PlanArrays.from_plans([Plan(**{**base, **kw, "zero_stage": z}) for z in (0, 1, 3)])


def test_sharded_optimizer_snapshots_less_and_writes_the_same():
    spec = load_transformer("llama3-8b")
    cluster = load_cluster("dgx_h100", stack="megatron-core")  # saves asynchronously
    write, snap = checkpoint_bytes(spec, cluster, _plans())
    # 8B params x (2 weights + 12 Adam/master) bytes over one node of 8 ranks
    assert write[0] == pytest.approx(8.03e9 * 14, rel=0.01)
    # DCP deduplicates replicas, so the bytes written do not depend on ZeRO ...
    assert write == pytest.approx(np.full(3, write[0]))
    # ... but the async snapshot of each rank's own state does: ZeRO shards it over dp = 8
    assert snap[0] == pytest.approx(8 * write[0]) and snap[1] < snap[0] and snap[2] <= snap[1]
    g = goodput_inputs(cluster)
    f = stall_and_interval(g, 8, 8, np.full(3, 1.0), write, snap)
    assert f["stall_s"][1] < f["stall_s"][0] and f["goodput_fraction"][1] > f["goodput_fraction"][0]


def test_settings_refuse_non_positive_values():
    with pytest.raises(InputError, match="--restart-minutes must be > 0, got -1"):
        GoodputSettings(restart_minutes=-1)
