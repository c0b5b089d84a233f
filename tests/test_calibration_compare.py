"""Issue 'close the loop': calibration fitting on hand-made numbers, a real (quick) calibration
validating as a Cluster, the compare statistics on hand-made data, and the HTML report from a
fixture, checked in a real browser when Chromium is installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from planner.calibration import fit_link, fit_linear, line_fit, median_raw
from planner.compare import (MEMORY, compare_one, rank_memory, rank_stage, ranks, spearman,
                             summarize)
from planner.hardware import Cluster
from planner.plan import Plan
from planner.report import compare_html

FIXTURE = Path(__file__).parent / "fixtures" / "predicted_vs_measured_small.json"


def test_line_fit_and_linear_least_squares():
    a, b = line_fit([1, 2, 3, 4], [3, 5, 7, 9])
    assert (a, b) == pytest.approx((1.0, 2.0))
    # y = 2 + 3 k x1 + 5 t x2: recover k = 0.5, t = 2 from 3 points
    xs = [(1, 0), (0, 1), (1, 1)]
    truth = [2 + 3 * 0.5 * p + 5 * 2 * q for p, q in xs]
    model = lambda v: [2 + 3 * v[0] * p + 5 * v[1] * q for p, q in xs]  # noqa: E731
    assert fit_linear(model, [0.0, 0.0], truth, [1e-3, 1e-3]) == pytest.approx([0.5, 2.0])


def test_calibration_rounds_merge_to_medians():
    """Three rounds of raw measurements become one: each timing the median over the rounds,
    sizes and names kept, lists merged element by element; one slow round moves nothing."""
    def raw(t):
        return {"ranks": [{"compute": {"dispatch_s": t, "gemm": [
            {"m": 8, "k": 8, "n": 8, "dtype": "float32", "seconds": 2 * t}]},
            "checkpoint": {"probes": [{"tensors": 3, "bytes": 100, "seconds": [t, 3 * t]}]}}],
            "world": 2, "host": "h", "quick": False}
    merged = median_raw([raw(1.0), raw(50.0), raw(2.0)])
    rank = merged["ranks"][0]
    assert rank["compute"]["dispatch_s"] == 2.0
    assert rank["compute"]["gemm"] == [{"m": 8, "k": 8, "n": 8, "dtype": "float32",
                                        "seconds": 4.0}]
    assert rank["checkpoint"]["probes"][0] == {"tensors": 3, "bytes": 100, "seconds": [2.0, 6.0]}
    assert merged["world"] == 2 and merged["host"] == "h" and merged["quick"] is False
    assert merged["rounds"] == 3


def test_link_fit_recovers_latencies_and_bandwidth():
    """Synthetic gloo: 400 us per step, 1 ms per call, 2 GB/s."""
    step, call, bw = 4e-4, 1e-3, 2e9
    p2p = [{"bytes": b, "seconds": step + b / bw} for b in (256, 65536, 1 << 20, 1 << 22)]
    coll = []
    for n in (2, 4):
        for b in (256, 65536, 1 << 20, 1 << 22):
            coll += [{"op": "all_reduce", "n": n, "bytes": b,
                      "seconds": call + 2 * (n - 1) * step + 2 * (n - 1) / n * b / bw},
                     {"op": "all_gather", "n": n, "bytes": b,
                      "seconds": call + (n - 1) * step + (n - 1) / n * b / bw}]
    fit = fit_link({"ranks": [{"p2p": p2p, "collectives": coll}]})
    assert fit["latency_s"] == pytest.approx(step, rel=1e-6)
    assert fit["call_latency_s"] == pytest.approx(call, rel=1e-6)
    assert fit["bandwidth_GBps"] == pytest.approx(2.0, rel=1e-6)


def test_rank_correlation_by_hand():
    assert ranks([10, 30, 20, 20]) == [1, 4, 2.5, 2.5]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    # one swap among 4: rho = 1 - 6*sum(d^2)/(n(n^2-1)) = 1 - 6*2/60 = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


def _pred(step: float, weights: float, stage_weights=None) -> dict:
    mem = {"weights_bytes": weights, "gradients_bytes": weights, "optimizer_bytes": 2 * weights,
           "activations_bytes": 100.0}
    by_stage = {s: dict(mem, **(stage_weights or {}).get(s, {})) for s in
                ("first", "middle", "last")}
    return {"step_time_s": step, "breakdown": {"compute_s": step}, "memory": mem,
            "memory_by_stage": by_stage}


def test_compare_math_on_hand_made_rows():
    plan = Plan(dp=2, tp=1, pp=1, micro_batch_size=1, global_batch_size=2)
    meas = {"step_time_s": 0.10, "memory": [
        {"rank": r, "params_bytes": 1000, "grads_bytes": 1000, "optimizer_bytes": 2000,
         "activations_bytes": 80} for r in (0, 1)]}
    row = compare_one(plan, _pred(0.12, 1000.0), meas)
    assert row["step_error"] == pytest.approx(0.2)
    assert row["memory_errors"]["weights"] == 0 and row["memory_errors"]["activations"] == \
        pytest.approx(0.25)
    rows = [row, compare_one(plan, _pred(0.05, 1000.0), {**meas, "step_time_s": 0.06}),
            compare_one(plan, _pred(0.30, 1000.0), {**meas, "step_time_s": 0.20})]
    s = summarize(rows)
    assert s["step_mape_pct"] == pytest.approx(100 * (0.2 + 1 / 6 + 0.5) / 3)
    assert s["within_15_pct"] == 0 and s["rank_correlation"] == pytest.approx(1.0)
    assert s["predicted_best_vs_measured_best_pct"] == pytest.approx(0.0)


def test_ranks_map_to_pipeline_stages():
    plan = Plan(dp=2, tp=1, pp=3, micro_batch_size=1, global_batch_size=6)
    # order tp-cp-dp-pp: ranks 0,1 stage 0; 2,3 stage 1; 4,5 stage 2
    assert [rank_stage(plan, r) for r in range(6)] == ["first", "first", "middle", "middle",
                                                       "last", "last"]


def test_every_pipeline_stage_is_compared_with_its_own_prediction():
    """pp = 4, 1F1B: stage s holds pp - s micro-batches of activations, so the two middle stages
    differ; each rank is held to its own stage's prediction, not to stage 1's."""
    from executor.shapes import one_node
    from planner.cost.evaluate import predict
    from planner.transformer import load_transformer
    plan = Plan(dp=1, tp=1, pp=4, micro_batch_size=2, global_batch_size=8, precision="fp32")
    pred = predict(load_transformer("tiny"), one_node(4), plan)
    acts = [s["activations_bytes"] for s in pred["memory_per_stage"]]
    assert len(acts) == 4 and acts[1] > acts[2]
    assert rank_memory(plan, pred, 2) == pred["memory_per_stage"][2]
    measured = {"step_time_s": pred["step_time_s"], "memory": [
        {"rank": r, **{m: pred["memory_per_stage"][r][p] for p, m in MEMORY.items()}}
        for r in range(4)]}
    row = compare_one(plan, pred, measured)
    assert max(row["memory_errors"].values()) == 0.0
    old = {k: v for k, v in pred.items() if k != "memory_per_stage"}  # earlier predictions
    assert compare_one(plan, old, measured)["memory_errors"]["activations"] > 0.3


def test_report_from_fixture_contains_the_plots(tmp_path):
    data = json.loads(FIXTURE.read_text())
    page = compare_html.write(tmp_path / "report.html", data).read_text()
    for title in ("Step time: predicted vs. measured", "predicted = measured",
                  "Predicted breakdown beside the measured step", "measured total",
                  "Memory per rank: predicted vs. measured", "<table>"):
        assert title in page
    assert page.count("plotly") > 3


def test_report_command_renders_in_a_browser(tmp_path):
    """`paraplan report` on the fixture, then headless Chromium screenshots the page (skipped
    where Chromium is not installed: .ci/run installs it)."""
    html = tmp_path / "report.html"
    r = subprocess.run([sys.executable, "-m", "planner.cli", "report", str(FIXTURE), "--html",
                        str(html)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("chromium not installed")
    shot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600",
                    f"--screenshot={shot}", html.as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 20_000  # a rendered page, not a blank


def _mean_seconds(raw: dict, part: str) -> list[tuple[dict, float]]:
    """Each compute measurement of rank 0 with its time averaged over the ranks."""
    rows = zip(*(r["compute"][part] for r in raw["ranks"]))
    return [(rs[0], sum(r["seconds"] for r in rs) / len(rs)) for rs in rows]


def test_quick_calibration_reproduces_what_it_measured(tmp_path):
    """A real (quick) calibration of this machine, 2 ranks, checked against its own raw
    measurements: the fp32 peak is the fastest GEMM rate measured and the memory bandwidth the
    fastest copy (means over ranks); the per-kernel overhead and GEMM slowdown make the model
    predict the two single-rank probe steps they were fitted to (within 2%), unless one sits at
    its bound; and each framework overhead makes its probe plan's prediction equal its measured
    step, or is 0 where the model without it already predicts more."""
    from executor.calibrate import PROBE
    from executor.calibration_run import with_fit
    from planner.cost.evaluate import predict
    out = tmp_path / "cpu.json"
    r = subprocess.run([sys.executable, "-m", "planner.cli", "calibrate", "--world-size", "2",
                        "--quick", "--out", str(out)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    cluster = Cluster.model_validate_json(out.read_text())
    raw = json.loads((tmp_path / "cpu.raw.json").read_text())
    assert cluster.num_gpus == 2 and raw["world"] == 2 and len(raw["ranks"]) == 2
    fp32 = [2 * g["m"] * g["k"] * g["n"] / sec for g, sec in _mean_seconds(raw, "gemm")
            if g["dtype"] == "float32"]
    assert cluster.gpu.peak_tflops.fp32 * 1e12 == pytest.approx(max(fp32), rel=1e-9)
    copies = [m["bytes"] / sec for m, sec in _mean_seconds(raw, "memory")]
    assert cluster.gpu.hbm_bandwidth_GBps * 1e9 == pytest.approx(max(copies), rel=1e-9)
    one = with_fit(cluster.model_dump(), cluster.gpu.kernel_overhead_s,
                   1 / cluster.gpu.gemm_sustained_fraction, gpus=1)
    probes = raw["ranks"][0]["probe"]
    measured = [sum(rank["probe"][i]["seconds"] for rank in raw["ranks"]) / 2
                for i in range(len(probes))]
    predicted = [predict(PROBE, one, Plan(**p["plan"]))["step_time_s"] for p in probes]
    assert len(probes) == 2  # quick: two probes for the two fitted numbers
    if cluster.gpu.kernel_overhead_s > 0 and cluster.gpu.gemm_sustained_fraction < 1:
        assert predicted == pytest.approx(measured, rel=0.02)
    else:  # a number at its bound: even there the model predicts a probe slower than measured
        assert any(p > m for p, m in zip(predicted, measured)), (predicted, measured)
    assert [p["overhead"] for p in raw["overhead_probes"]] == [
        "dp_step_overhead_s", "recompute_block_overhead_s", "fsdp_unit_overhead_s",
        "fsdp_unit_step_overhead_s", "tp_block_overhead_s",
        "sp_block_overhead_s", "pp_microbatch_overhead_s", "cp_block_overhead_s"]
    assert raw["rounds"] == 1 and all(len(p["rounds_s"]) == 1 for p in raw["overhead_probes"])
    for p in raw["overhead_probes"]:
        value = getattr(cluster.stack, p["overhead"])
        predicted = predict(PROBE, cluster, Plan(**p["plan"]))["step_time_s"]
        if value > 0:
            assert predicted == pytest.approx(p["measured_s"], rel=1e-3), p["overhead"]
        else:
            assert predicted >= p["measured_s"], p["overhead"]


def test_calibrate_refuses_the_other_modes_flags(tmp_path):
    """`paraplan calibrate` measures; `--from-runs` refits: a flag of the other mode is refused
    instead of ignored, and --help shows each mode's usage and flags apart."""
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "planner.cli", "calibrate", *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "COLUMNS": "120"})
    r = cli("--from-runs", "pvm.json", "--quick", "--world-size", "4", "--out", "x.json")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--world-size, --quick: only for measuring this machine, not with --from-runs" in \
        r.stderr
    r = cli("--folds", "3", "--profile", "dgx_h100", "--out", "x.json")
    assert r.returncode == 2
    assert "--profile, --folds: only with --from-runs (refitting a profile)" in r.stderr
    assert not (tmp_path / "x.json").exists()
    page = cli("--help").stdout
    assert "paraplan calibrate --from-runs RUN [RUN ...] [--profile P] [--folds K] --out F" in page
    measure, refit = page.split("measure this machine (the default):")[1].split(
        "refit a profile to measured runs (--from-runs):")
    assert "--quick" in measure and "--folds" not in measure
    assert "--folds" in refit and "--quick" not in refit
