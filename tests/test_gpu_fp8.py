"""Tier 3: fp8 execution (torchao float8 training: Linear GEMMs in fp8 with dynamic tensorwise
scales, the rest under bf16 autocast) on a CUDA GPU with fp8 GEMMs (compute capability 8.9+).
Skipped without such a GPU or without torchao; run with `python -m pytest tests/test_gpu_fp8.py`."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from executor.parallelize import build_model, loss_fn
from executor.precision import autocast, convert_fp8
from planner.measurement import Measurement
from planner.plan import Plan
from planner.transformer import load_transformer

FP8_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
pytestmark = [
    pytest.mark.skipif(not FP8_GPU, reason="no CUDA GPU with fp8 GEMMs (sm 8.9+)"),
    pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao missing")]

PLAN = {"dp": 1, "tp": 1, "pp": 1, "micro_batch_size": 2, "global_batch_size": 8,
        "precision": "fp8"}


def test_linears_become_float8_and_train() -> None:
    from torchao.float8.float8_linear import Float8Linear
    spec, plan, dev = load_transformer("tiny"), Plan(**PLAN), torch.device("cuda")
    model = build_model(spec, plan, 0)
    convert_fp8(model, plan, dev)
    model.to(dev)
    assert any(isinstance(m, Float8Linear) for m in model.modules())
    x = torch.randint(0, spec.vocab_size, (2, spec.seq_len + 1), device=dev)
    with autocast(plan, dev):
        loss = loss_fn(model(x[:, :-1]), x[:, 1:])
    loss.backward()
    assert math.isfinite(float(loss))
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_paraplan_run_fp8(tmp_path: Path) -> None:
    data = tmp_path / "text.txt"
    data.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    r = subprocess.run([sys.executable, "-m", "planner.cli", "run", "--plan", json.dumps(PLAN),
                        "--steps", "8", "--warmup", "1", "--data", str(data), "--out", "m.json"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "CUDA_VISIBLE_DEVICES": "0"})
    assert r.returncode == 0, r.stdout + r.stderr
    m = Measurement.model_validate_json((tmp_path / "m.json").read_text())
    assert m.environment.device == "cuda" and m.skipped_steps is None
    assert all(math.isfinite(x) for x in m.losses) and m.losses[-1] < m.losses[0]
