"""`paraplan calibrate --from-runs` (planner/refit.py): runs "measured" by a known profile are
fitted back from a wrong starting profile; the fit must recover the known fields and predict
runs it did not see; bad input is one clear line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from executor.shapes import one_node
from planner.hardware import Cluster
from planner.refit import Run, fit, predict_runs, refit
from planner.search.search import search
from planner.transformer import load_transformer

TRUTH = {"gpu.kernel_overhead_s": 2e-4, "gpu.gemm_sustained_fraction": 0.6,
         "stack.tp_block_overhead_s": 3e-3, "stack.fsdp_unit_overhead_s": 1e-3,
         "intra_node.call_latency_s": 1.5e-3}


def _with(profile: dict, values: dict) -> dict:
    data = json.loads(json.dumps(profile))
    for path, v in values.items():
        *head, last = path.split(".")
        d = data
        for k in head:
            d = d[k]
        d[last] = v
    return data


@pytest.fixture(scope="module")
def world():
    """The tiny model's valid plans on 4 ranks, step times from the TRUTH profile."""
    base = one_node(4).model_dump()
    truth = Cluster.model_validate(_with(base, TRUTH))
    spec = load_transformer("tiny")
    res = search(spec, truth, 8, "fp32")
    runs = [Run(spec, res.plan(i), 1.0, "synthetic") for i in range(res.fitting)]
    measured = predict_runs(truth, runs)
    runs = [Run(r.spec, r.plan, float(t), "synthetic") for r, t in zip(runs, measured)]
    start = _with(base, {k: v * f for (k, v), f in zip(TRUTH.items(), (3, 1.5, 0.3, 3, 0.5))})
    return base, runs, start


def test_fit_recovers_the_profile_that_made_the_runs(world):
    _, runs, start = world
    assert len(runs) > 100
    fitted, moved = fit(start, runs)
    cluster = Cluster.model_validate(fitted)
    got = {"gpu.kernel_overhead_s": cluster.gpu.kernel_overhead_s,
           "gpu.gemm_sustained_fraction": cluster.gpu.gemm_sustained_fraction,
           "stack.tp_block_overhead_s": cluster.stack.tp_block_overhead_s,
           "stack.fsdp_unit_overhead_s": cluster.stack.fsdp_unit_overhead_s,
           "intra_node.call_latency_s": cluster.intra_node.call_latency_s}
    for k, v in TRUTH.items():
        assert got[k] == pytest.approx(v, rel=0.02), k
    measured = np.array([r.measured_s for r in runs])
    assert np.max(np.abs(predict_runs(cluster, runs) / measured - 1)) < 0.01
    assert {f.path for f in moved} >= set(TRUTH)


def test_report_has_before_after_and_held_out_errors(world):
    _, runs, start = world
    fitted, report = refit(start, runs, folds=4)
    assert report["before"]["mean_abs_pct"] > 10
    assert report["after"]["mean_abs_pct"] < 1
    assert report["cross_validated"]["mean_abs_pct"] < 1  # noise-free: held-out runs fit too
    assert "refitted by `paraplan calibrate --from-runs`" in fitted["gpu"]["sources"][
        "kernel_overhead_s"]
    assert "refitted" in fitted["stack"]["sources"]["tp_block_overhead_s"]
    Cluster.model_validate(fitted)


def test_runs_that_do_not_fit_the_profile_are_rejected(world):
    base, runs, _ = world
    two = one_node(2).model_dump()
    with pytest.raises(ValueError, match=r"not valid on profile dgx_h100-2 \(2 ranks\): "
                                         r"dp\*tp\*pp\*cp = .* = 4 but the cluster has 2"):
        refit(two, runs[:3])


def test_cli_refit_and_bad_input(tmp_path, world):
    base, runs, start = world
    rows = [{"plan": r.plan.to_json_dict(), "measured": {"step_time_s": r.measured_s}}
            for r in runs]
    (tmp_path / "pvm.json").write_text(json.dumps({
        "transformer": runs[0].spec.model_dump(), "profile": start, "rows": rows}))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "planner.cli", "calibrate", *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    r = cli("--from-runs", "pvm.json", "--out", "refit.json", "--folds", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "refitted, same runs" in r.stdout
    Cluster.model_validate_json((tmp_path / "refit.json").read_text())
    assert json.loads((tmp_path / "refit.refit.json").read_text())["after"]["mean_abs_pct"] < 1
    (tmp_path / "m.json").write_text("{}")
    r = cli("--from-runs", "m.json", "--out", "x.json", "--profile", "dgx_h100")
    assert r.returncode == 2 and "field 'plan'" in r.stderr and "Traceback" not in r.stderr


def test_a_field_moves_at_most_max_factor(world):
    """A field with a value stays within MAX_FACTOR of it, however the runs pull."""
    from planner.refit import MAX_FACTOR
    _, runs, start = world
    far = _with(start, {"stack.tp_block_overhead_s": TRUTH["stack.tp_block_overhead_s"]
                        / 10})
    fitted, _ = fit(far, runs)
    got = Cluster.model_validate(fitted).stack.tp_block_overhead_s
    assert got == pytest.approx(TRUTH["stack.tp_block_overhead_s"] / 10 * MAX_FACTOR)
