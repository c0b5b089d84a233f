"""Tier 3: the executor on CUDA GPUs with NCCL. Skipped where torch sees no GPU (the CPU build,
the development machines); run on a GPU node with `python -m pytest tests/test_gpu.py`.

Each test launches `paraplan run` (torchrun, one process per GPU) on the tiny model in fp32 and
checks the Measurement: NCCL was used, the device allocator's peak is reported, and the losses
match the single-process CPU reference (GPU kernels sum in another order: 1e-4 relative)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from executor.train import TrainConfig, train_reference
from planner.measurement import Measurement
from planner.plan import Plan
from planner.transformer import load_transformer

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = pytest.mark.skipif(GPUS == 0, reason="no CUDA GPU visible to torch")

BASE = {"micro_batch_size": 2, "global_batch_size": 8, "precision": "fp32"}
PLANS = [
    pytest.param({"dp": 1, "tp": 1, "pp": 1, **BASE}, id="one-gpu"),
    pytest.param({"dp": 2, "tp": 1, "pp": 1, **BASE}, id="dp2-ddp"),
    pytest.param({"dp": 2, "tp": 1, "pp": 1, "zero_stage": 3, **BASE}, id="dp2-fsdp"),
    pytest.param({"dp": 1, "tp": 2, "pp": 1, "sequence_parallel": True, **BASE}, id="tp2-sp"),
    pytest.param({"dp": 1, "tp": 1, "pp": 2, **BASE}, id="pp2-1f1b"),
    pytest.param({"dp": 1, "tp": 1, "pp": 1, "cp": 2, **BASE}, id="cp2"),
    pytest.param({"dp": 2, "tp": 2, "pp": 1, "zero_stage": 1, **BASE}, id="dp2-tp2-zero1"),
]


@pytest.mark.parametrize("plan", PLANS)
def test_run_on_gpus_matches_cpu_reference(tmp_path, plan):
    world = Plan(**plan).world_size
    if world > GPUS:
        pytest.skip(f"needs {world} GPUs, {GPUS} visible")
    r = subprocess.run([sys.executable, "-m", "planner.cli", "run", "--plan", json.dumps(plan),
                        "--steps", "4", "--warmup", "1", "--out", "m.json"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stdout + r.stderr
    m = Measurement.model_validate_json((tmp_path / "m.json").read_text())
    assert m.environment.backend == "nccl" and m.environment.device == "cuda"
    assert len(m.memory) == world
    assert all(x.device_peak_bytes and x.device_peak_bytes > 0 for x in m.memory)
    ref, _ = train_reference(load_transformer("tiny"), Plan(**plan), TrainConfig(), 4)
    np.testing.assert_allclose(m.losses, ref, rtol=1e-4)
