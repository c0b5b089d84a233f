"""Issue 12 item 4: an error band on every prediction, from the leave-one-source-out residuals."""

from __future__ import annotations

import json

import pytest

from planner.cost.evaluate import predict
from planner.hardware import load_cluster, preset_names
from planner.plan import Plan
from planner.transformer import load_transformer
from planner.stack import stack_names
from planner.uncertainty import (FAMILIES, GENERATIONS, Band, band_for, bands_path,
                                 cluster_band, gpu_generation, stack_family, step_time_band)
from planner.validation.bands import MIN_RUNS, error_bands
from planner.validation.cv import Residual, shipped_cv

PLAN = Plan(dp=8, tp=1, pp=1, micro_batch_size=1, global_batch_size=16, zero_stage=3,
            recompute="full")


def test_family_and_generation():
    assert [stack_family(s) for s in ("megatron-lm-2021", "deepspeed", "megatron-core",
                                      "torchtitan", "fsdp", "cpu-stack")] == [
        "2021", "2021", "current", "current", "current", "current"]
    assert [gpu_generation(g) for g in ("a100_80g", "a100_40g", "a800", "h100_sxm", "h800",
                                        "h200", "b200", "mi300x", "cpu")] == [
        "ampere", "ampere", "ampere", "hopper", "hopper", "hopper", "blackwell", "cdna3", "other"]


def test_band_file_covers_every_group_and_says_how():
    data = json.loads(bands_path().read_text())
    assert data["how"] and data["widest"]["how"] and data["widest"]["unvalidated"]
    assert set(data["groups"]) == {f"{f}/{g}" for f in FAMILIES for g in GENERATIONS}
    for key, e in data["groups"].items():
        assert e["how"], key
        assert e["low_error_pct"] <= 0 <= e["high_error_pct"], key
        assert e["runs"] >= MIN_RUNS or e["unvalidated"], key
    for gen in ("blackwell", "cdna3", "other"):
        assert all(data["groups"][f"{f}/{gen}"]["unvalidated"] for f in FAMILIES)
    assert not data["groups"]["2021/ampere"]["unvalidated"]
    assert not data["groups"]["current/hopper"]["unvalidated"]


def test_band_file_matches_this_tree():
    """error_bands.json is the residuals of the cost model as it is now: rerun
    `python benchmarks/error_bands.py` after changing the cost model, profiles or stacks."""
    data = json.loads(bands_path().read_text())
    fresh = error_bands(shipped_cv().residuals)
    for key, e in fresh["groups"].items():
        for k in ("low_error_pct", "high_error_pct", "runs", "group", "unvalidated"):
            assert data["groups"][key][k] == pytest.approx(e[k], abs=1e-6), (
                key, k, "stale: rerun python benchmarks/error_bands.py")


@pytest.mark.parametrize("cluster", preset_names("clusters"))
@pytest.mark.parametrize("stack", sorted(stack_names()))
def test_range_holds_the_point_estimate(cluster, stack):
    c = load_cluster(cluster, 1, stack)
    p = predict(load_transformer("llama3-8b"), c, PLAN)
    low, high = p["step_time_range_s"]
    assert 0 < low <= p["step_time_s"] <= high
    band = p["step_time_band"]
    assert set(band) == {"low_error_pct", "high_error_pct", "group", "runs", "unvalidated"}
    lo_f, hi_f = step_time_band(c)
    assert lo_f <= 1 <= hi_f
    assert (low, high) == pytest.approx((p["step_time_s"] * lo_f, p["step_time_s"] * hi_f))
    gen = gpu_generation(c.gpu.name)
    assert band["unvalidated"] == (gen in ("blackwell", "cdna3", "other"))


def test_direction_measured_is_predicted_over_one_plus_error(tmp_path):
    """e = predicted / measured - 1, so measured = predicted / (1 + e): a model that runs 20%
    fast at the 90th percentile (e = +20%) puts the true time down to predicted / 1.2."""
    entry = {"low_error_pct": -10.0, "high_error_pct": 20.0, "group": "current/hopper",
             "runs": 9, "how": "test"}
    path = tmp_path / "bands.json"
    path.write_text(json.dumps({"groups": {"current/hopper": entry},
                                "widest": {**entry, "group": "widest", "unvalidated": True}}))
    band = band_for("torchtitan", "h100_sxm", path)
    assert band == Band(-10.0, 20.0, "current/hopper", 9, False)
    assert band.factors == pytest.approx((1 / 1.2, 1 / 0.9))
    assert band_for("torchtitan", "b200", path).unvalidated


def test_fallbacks_to_wider_groups():
    def res(stack: str, gpu: str, err: float) -> Residual:
        return Residual("r", "s", "", gpu, stack, 0.8, 1 + err, 1.0)
    rs = ([res("megatron-core", "h100_sxm", e) for e in (-0.2, -0.1, 0.0, 0.1, 0.3)]
          + [res("megatron-lm-2021", "a100_80g", e) for e in (-0.05, 0.02, 0.05, 0.08, 0.1, 0.12)]
          + [res("megatron-core", "a100_80g", e) for e in (0.4, 0.5)])
    g = error_bands(rs)["groups"]
    assert g["current/hopper"]["group"] == "current/hopper" and g["current/hopper"]["runs"] == 5
    assert g["current/ampere"]["group"] == "generation ampere"  # 2 runs: the generation's 8
    assert g["2021/hopper"]["group"] == "generation hopper"
    assert g["current/blackwell"]["unvalidated"] and g["current/blackwell"]["group"] == "widest"
    assert "fewer than" in g["current/ampere"]["how"]
    widest = error_bands(rs)["widest"]
    assert all(widest["low_error_pct"] <= e["low_error_pct"] and
               e["high_error_pct"] <= widest["high_error_pct"] for e in g.values())


def test_a100_2021_stack_uses_its_own_residuals():
    band = cluster_band(load_cluster("dgx_a100_80g", 1, "megatron-lm-2021"))
    assert band.group == "2021/ampere" and band.runs == 25 and not band.unvalidated
