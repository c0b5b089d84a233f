"""Shared fixtures: presets are loaded once per session."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from planner.hardware import Cluster, load_cluster
from planner.transformer import TransformerSpec, load_transformer


@pytest.fixture(scope="session")
def gpt3_175b() -> TransformerSpec:
    return load_transformer("gpt3-175b")


@pytest.fixture(scope="session")
def selene_1024() -> Cluster:
    """128 DGX A100 80GB nodes: the 1,024-GPU cluster of Narayanan et al. 2021, with that
    paper's stack."""
    return load_cluster("dgx_a100_80g", num_nodes=128, stack="megatron-lm-2021")


def with_stack(cluster: Cluster, **changes) -> Cluster:
    """The cluster with some fields of its bound stack changed (validated)."""
    data = cluster.model_dump()
    data["stack"].update(changes)
    return Cluster.model_validate(data)


def predict_cli(plan: dict, transformer: str = "llama3-8b", cluster: str = "dgx_h100",
                env: dict | None = None) -> subprocess.CompletedProcess:
    """`paraplan predict -t T -c C --plan P` in a fresh interpreter, output captured (the
    bad-input tests read its exit status and its one stderr line)."""
    return subprocess.run([sys.executable, "-m", "planner.cli", "predict", "-t", transformer,
                           "-c", cluster, "--plan", json.dumps(plan)],
                          capture_output=True, text=True, env=env)

