"""Goodput model (planner/goodput.py) and its sourced data (planner/reliability.py,
hardware_profiles/reliability, hardware_profiles/storage)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner import goodput as gp
from planner.reliability import (RELIABILITY_NUMBERS, STORAGE_NUMBERS, load_reliability,
                                 load_storage, preset_names)
from planner.schema import InputError

DAY = 86400.0
LLAMA3_GPUS, LLAMA3_DAYS, LLAMA3_INTERRUPTIONS = 16_384, 54, 419  # Llama 3 paper, sec. 3.3.4


# ---- (a) predicted interruptions vs Meta's 419 ------------------------------------------------

def test_h100_rate_reproduces_llama3_interruptions_in_sample():
    # IN-SAMPLE: the h100 rate IS 419 / (16,384 x 54 x 24) GPU-hours (Llama Team 2024, "The
    # Llama 3 Herd of Models", sec. 3.3.4, Table 5), so this only checks the arithmetic chain
    # profile -> MTBF -> interruptions; the independent check is the next test.
    h100 = load_reliability("h100")
    n = gp.expected_interruptions(LLAMA3_DAYS * DAY, LLAMA3_GPUS, h100.failures_per_gpu_hour)
    assert n == pytest.approx(LLAMA3_INTERRUPTIONS, rel=1e-9)
    assert gp.cluster_mtbf_s(h100.failures_per_gpu_hour, LLAMA3_GPUS) / 3600 == pytest.approx(
        3.09, abs=0.01)  # "about one every three hours"


def test_a100_study_predicts_llama3_interruptions_within_source_spread():
    # INDEPENDENT: Kokolis et al. 2025 ("Revisiting Reliability in Large-Scale ML Research
    # Clusters", HPCA, arXiv 2410.21680) report 6.50 (RSC-1) and 2.34 (RSC-2) failures per 1000
    # node-days on Meta's A100 clusters (~150M GPU-hours). Scaled to 16,384 GPUs x 54 days with
    # no generation factor (none is published: the Llama 3 paper gives no A100 baseline), they
    # predict 259 and 719. The two clusters of the same operator differ by 6.50/2.34 = 2.8x, so a
    # single cluster's rate cannot be expected to predict another cluster better than that
    # spread: we require each within a factor 2 of 419 (sqrt(2.8) = 1.67 either side of their
    # geometric mean, rounded up) and 419 inside the two clusters' interval.
    a100 = load_reliability("a100")
    pred = [gp.expected_interruptions(LLAMA3_DAYS * DAY, LLAMA3_GPUS, rate)
            for rate in (a100.failures_per_gpu_hour_low, a100.failures_per_gpu_hour,
                         a100.failures_per_gpu_hour_high)]
    assert pred[0] == pytest.approx(258.8, abs=0.1) and pred[2] == pytest.approx(718.8, abs=0.1)
    for p in pred:
        assert abs(math.log(p / LLAMA3_INTERRUPTIONS)) <= math.log(2.0), p
    assert pred[0] <= LLAMA3_INTERRUPTIONS <= pred[2]


def test_llama3_goodput_plausible_against_reported_90_percent():
    # Plausibility, not a fit: Llama 3 reports ">90% effective training time". 405B params x 14
    # bytes (bf16 weights + fp32 master + Adam m, v) over 2,048 nodes on the Tectonic preset, the
    # h100 rate and restart time, sync saving.
    e = gp.estimate_from_profiles(50 * DAY, LLAMA3_GPUS, 8, 405e9 * 14 / 2048,
                                  load_reliability("h100"), load_storage("parallel_fs"))
    assert 0.85 <= e.goodput_fraction <= 0.97


# ---- (b) properties ---------------------------------------------------------------------------

def _goodput(num_gpus: int, write_GBps: float, async_save: bool = False,
             bytes_per_node: float = 100e9, host_copy_GBps: float = 50.0) -> float:
    stall = gp.checkpoint_stall_s(bytes_per_node, write_GBps, async_save=async_save,
                                  host_copy_GBps=host_copy_GBps)
    write = gp.checkpoint_write_s(bytes_per_node, write_GBps) if async_save else 0.0
    rate = load_reliability("h100").failures_per_gpu_hour
    return gp.goodput_estimate(30 * DAY, num_gpus, failures_per_gpu_hour=(rate, rate, rate),
                               restart_s=600.0, checkpoint_stall_s=stall,
                               background_write_s=write).goodput_fraction


gpus = st.integers(min_value=8, max_value=32_768)
bandwidth = st.floats(min_value=0.5, max_value=50.0)
node_bytes = st.floats(min_value=1e9, max_value=500e9)


@settings(max_examples=200, deadline=None)
@given(gpus, gpus, bandwidth, node_bytes)
def test_goodput_falls_as_cluster_grows(n1, n2, bw, b):
    small, large = sorted((n1, n2))
    assert _goodput(large, bw, bytes_per_node=b) <= _goodput(small, bw, bytes_per_node=b) + 1e-12


@settings(max_examples=200, deadline=None)
@given(gpus, bandwidth, bandwidth, node_bytes)
def test_goodput_rises_with_write_bandwidth(n, bw1, bw2, b):
    slow, fast = sorted((bw1, bw2))
    assert _goodput(n, fast, bytes_per_node=b) >= _goodput(n, slow, bytes_per_node=b) - 1e-12


@settings(max_examples=200, deadline=None)
@given(gpus, bandwidth, node_bytes, st.floats(min_value=1.0, max_value=20.0))
def test_async_saving_never_worse_than_sync(n, bw, b, host_over_write):
    # premise: the snapshot to host memory is at least as fast as the storage write
    async_g = _goodput(n, bw, async_save=True, bytes_per_node=b, host_copy_GBps=bw * host_over_write)
    assert async_g >= _goodput(n, bw, bytes_per_node=b) - 1e-12


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1.0, max_value=1e4), st.floats(min_value=1e-4, max_value=1e-2),
       st.floats(min_value=0.0, max_value=0.1), st.sampled_from(["young", "daly"]))
def test_interval_is_the_goodput_optimum(mtbf_s, stall_over_mtbf, restart_over_mtbf, method):
    # valid regime of the first-order model: stall << MTBF, restart well below MTBF
    stall, restart = stall_over_mtbf * mtbf_s, restart_over_mtbf * mtbf_s
    best = gp.optimal_interval_s(stall, mtbf_s, method)
    g = [gp.goodput_fraction(k * best, stall, mtbf_s, restart) for k in (0.5, 1.0, 2.0)]
    assert g[1] >= g[0] and g[1] >= g[2]


def test_functions_broadcast_over_arrays():
    import numpy as np
    m = gp.cluster_mtbf_s(2e-5, np.array([8, 1024, 16_384]))
    assert m.shape == (3,) and np.all(np.diff(m) < 0)
    assert gp.optimal_interval_s(10.0, m).shape == (3,)


def test_hand_computed_case():
    # 1e-5 /GPU-h, 1,000 GPUs -> M = 100 h = 360,000 s; C = 100 GB / 1 GB/s = 100 s;
    # Young I = sqrt(2 x 100 x 360,000) = 8,485.3 s; L = 4,242.6 + 300 s;
    # G = (1 - 4,542.6/360,000) x 8,485.3/8,585.3 = 0.98738 x 0.98835 = 0.97588
    m = gp.cluster_mtbf_s(1e-5, 1000)
    c = gp.checkpoint_stall_s(100e9, 1.0)
    i = gp.optimal_interval_s(c, m)
    assert (m, c) == (pytest.approx(360_000.0), pytest.approx(100.0))
    assert i == pytest.approx(8485.28, abs=0.01)
    assert gp.goodput_fraction(i, c, m, 300.0) == pytest.approx(0.97588, abs=1e-5)
    e = gp.goodput_estimate(10 * DAY, 1000, failures_per_gpu_hour=(1e-5, 1e-5, 1e-5),
                            restart_s=300.0, checkpoint_stall_s=c, price_per_gpu_hour_usd=2.0,
                            step_time_band=(0.9, 1.2))
    assert e.days_with_losses == pytest.approx(10 / 0.97588, rel=1e-4)
    assert e.days_ideal_range == pytest.approx((9.0, 12.0))
    assert e.cost_usd_ideal == pytest.approx(10 * 24 * 1000 * 2.0)
    assert e.days_with_losses_range[0] < e.days_with_losses < e.days_with_losses_range[1]


# ---- (c) bad input: one clear line naming the field --------------------------------------------

@pytest.mark.parametrize("call, field, value", [
    (lambda: gp.cluster_mtbf_s(-1e-5, 8), "failures_per_gpu_hour", "-1e-05"),
    (lambda: gp.optimal_interval_s(10.0, -3600.0), "mtbf_s", "-3600.0"),
    (lambda: gp.checkpoint_write_s(1e9, 0.0), "write_GBps", "0.0"),
    (lambda: gp.checkpoint_stall_s(1e9, 1.0, async_save=True), "host_copy_GBps", "required"),
    (lambda: gp.goodput_fraction(100.0, 1.0, float("nan"), 0.0), "mtbf_s", "nan"),
    (lambda: gp.optimal_interval_s(1.0, 1.0, "euler"), "method", "euler"),
    (lambda: gp.goodput_estimate(DAY, 8, failures_per_gpu_hour=(3e-5, 2e-5, 1e-5), restart_s=1,
                                 checkpoint_stall_s=1), "failures_per_gpu_hour", "low <= mid"),
])
def test_bad_arguments_name_the_field(call, field, value):
    with pytest.raises(ValueError) as err:
        call()
    assert isinstance(err.value, InputError)
    msg = str(err.value)
    assert field in msg and value in msg and "\n" not in msg


def test_bad_files_name_the_field(tmp_path):
    good = json.loads(load_storage("parallel_fs").model_dump_json())
    for patch, field in [({"write_GBps": 0}, "write_GBps"), ({"sources": {}}, "sources"),
                         ({"speed": 1}, "speed")]:
        p = tmp_path / "s.json"
        p.write_text(json.dumps({**good, **patch}))
        with pytest.raises(InputError, match=field):
            load_storage(str(p))
    rel = json.loads(load_reliability("h100").model_dump_json())
    p = tmp_path / "r.json"
    p.write_text(json.dumps({**rel, "failures_per_gpu_hour": -2e-5}))
    with pytest.raises(InputError, match="failures_per_gpu_hour"):
        load_reliability(str(p))
    p.write_text(json.dumps({**rel, "observed_interruptions": 400}))
    with pytest.raises(InputError, match="interruptions_by_cause sums to 419"):
        load_reliability(str(p))
    with pytest.raises(InputError, match="accepted: a100"):
        load_reliability("tpu_v9")


# ---- (d) the data files load and every number has a source -------------------------------------

@pytest.mark.parametrize("name", preset_names("reliability"))
def test_reliability_profiles_load_with_sources(name):
    r = load_reliability(name)
    for key in RELIABILITY_NUMBERS:
        if getattr(r, key) is not None:
            assert r.sources.get(key, "").strip(), f"{name}: {key} has no source"
    assert r.failures_per_gpu_hour_low <= r.failures_per_gpu_hour <= r.failures_per_gpu_hour_high
    if r.observed_gpu_hours is None:  # no data for this GPU: the file must say it assumes
        assert "ASSUMPTION" in r.sources["failures_per_gpu_hour"]


@pytest.mark.parametrize("name", preset_names("storage"))
def test_storage_profiles_load_with_sources(name):
    s = load_storage(name)
    for key in STORAGE_NUMBERS:
        if getattr(s, key) is not None:
            assert s.sources.get(key, "").strip(), f"{name}: {key} has no source"
    assert any("GB/s = 1e9 bytes" in n for n in s.notes)


def test_presets_cover_the_gpu_profiles_and_the_llama3_table():
    assert {"h100", "a100", "h200", "b200", "mi300x"} <= set(preset_names("reliability"))
    assert {"local_nvme", "parallel_fs"} <= set(preset_names("storage"))
    assert load_reliability("h100_sxm").name == "h100"  # found by GPU preset name
    h100 = load_reliability("h100")
    assert sum(h100.interruptions_by_cause.values()) == LLAMA3_INTERRUPTIONS
    assert h100.interruptions_by_cause["Faulty GPU"] == 148
    assert h100.cause_shares()["GPU HBM3 Memory"] == pytest.approx(0.172, abs=1e-3)
