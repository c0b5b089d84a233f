"""Tier 2 (2 gloo processes, tiny model): `paraplan run --save-every` measures the checkpoint
stall, and it matches the goodput model's prediction on this machine: bytes written / the write
bandwidth `paraplan calibrate` measures (same function), plus the cost per saved tensor that
calibrate fits on its probe model (1 and 5 blocks: 48 and 192 saved tensors to tiny's 156). `paraplan compare` shows
the two side by side."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys

import pytest

from executor.calibrate import measure_checkpoint_saves, measure_write_bandwidth
from planner.calibration import checkpoint_costs, storage_dict
from planner.hardware import Cluster, load_cluster
from planner.measurement import Measurement
from planner.money import checkpoint_bytes
from planner.plan import Plan
from planner.plan_arrays import PlanArrays

DP2 = {"dp": 2, "tp": 1, "pp": 1, "micro_batch_size": 2, "global_batch_size": 4,
       "precision": "fp32"}


def cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})


def two_rank_cluster(storage: dict):
    """dgx_h100 cut to one node of 2 'GPUs' (the run's world), with this machine's storage."""
    data = load_cluster("dgx_h100", stack="fsdp").model_dump()
    data.update(gpus_per_node=2, storage=storage)
    return Cluster.model_validate(data)


def tensor_bytes(root) -> int:
    """Tensor payload of the newest checkpoint under `root`, from DCP's own metadata."""
    from torch.distributed.checkpoint import FileSystemReader
    path = root / json.loads((root / "latest.json").read_text())["path"]
    meta = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    return sum(math.prod(v.size) * v.properties.dtype.itemsize
               for v in meta.values() if hasattr(v, "size"))


def test_measured_stall_matches_prediction_on_this_machine(tmp_path):
    r = cli("run", "--plan", json.dumps(DP2), "--steps", "11", "--warmup", "1", "--save-every",
            "1", "--checkpoint-dir", "ck", "--out", "m.json", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    m = Measurement.model_validate_json((tmp_path / "m.json").read_text())
    assert m.checkpoint_stall_s is not None and len(m.checkpoint_stall_s) == 11
    assert m.checkpoint_bytes and m.checkpoint_bytes > 1e6

    # The planner's bytes for the plan: fp32 weights 4 + Adam 8 bytes per parameter, written
    # once over the two replicas (DCP dedup). The tensor payload matches to 0.1%; the files add
    # .metadata and a torch.save header per tensor (~1.5 KB x 168 tensors here, ~10% of this
    # tiny model, negligible for large ones).
    write = measure_write_bandwidth(tmp_path)  # what `paraplan calibrate` runs
    saves = measure_checkpoint_saves(2, tmp_path)
    storage = storage_dict(write, saves, "test", "in this test")
    cluster = two_rank_cluster(storage)
    predicted_bytes = float(checkpoint_bytes(m.transformer, cluster,
                                             PlanArrays.from_plans([Plan(**DP2)]))[0][0])
    assert predicted_bytes == pytest.approx(tensor_bytes(tmp_path / "ck"), rel=1e-3)
    assert 1.0 < m.checkpoint_bytes / predicted_bytes < 1.15

    measured = statistics.median(m.checkpoint_stall_s)  # as compare takes it
    bandwidth_only = m.checkpoint_bytes / (write["write_GBps"] * 1e9)
    fixed, per_tensor = checkpoint_costs(write, saves)
    latency = fixed + per_tensor * m.checkpoint_tensors
    predicted = latency + bandwidth_only
    figures = (f"measured {measured:.4f} s (saves {[round(s, 4) for s in m.checkpoint_stall_s]}), "
               f"predicted {predicted:.4f} s = {fixed:.4f} s + {m.checkpoint_tensors} tensors x "
               f"{per_tensor * 1e3:.3f} ms (probes {saves['probes']}) + {m.checkpoint_bytes} B at "
               f"{write['write_GBps']:.2f} GB/s ({bandwidth_only:.4f} s)")
    print(figures)
    # The 30% target is measured by benchmarks/checkpoint_stall.py (repeated runs, figures
    # printed): on 2 shared cores one run's stall moves by more than that. Here, a bound that
    # still catches a wrong unit or a missing cost: bandwidth alone is ~20x too low.
    assert 1 / 3 <= predicted / measured <= 3, figures

    # compare: measured vs. predicted stall, from the measured bytes and from the plan
    profile = tmp_path / "profile.json"
    profile.write_text(cluster.model_dump_json())
    c = cli("compare", "m.json", "-c", str(profile), "--html", "r.html", cwd=tmp_path)
    assert c.returncode == 0, c.stdout + c.stderr
    assert "checkpoint stall measured" in c.stdout
    row = json.loads((tmp_path / "predicted_vs_measured.json").read_text())["rows"][0]
    ck = row["checkpoint"]
    assert ck["measured_bytes"] == m.checkpoint_bytes
    assert ck["predicted_stall_s"] == pytest.approx(predicted)
    assert 0 < -ck["bytes_error"] < 0.15  # the files' headers (above)
