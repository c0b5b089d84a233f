"""Shared fixtures: presets are loaded once per session."""

from __future__ import annotations

import pytest

from planner.hardware import Cluster, load_cluster
from planner.transformer import TransformerSpec, load_transformer


@pytest.fixture(scope="session")
def gpt3_175b() -> TransformerSpec:
    return load_transformer("gpt3-175b")


@pytest.fixture(scope="session")
def selene_1024() -> Cluster:
    """128 DGX A100 80GB nodes: the 1,024-GPU cluster of Narayanan et al. 2021."""
    return load_cluster("dgx_a100_80g", num_nodes=128)


def with_software(cluster: Cluster, **changes) -> Cluster:
    """The cluster with some `software` fields changed (validated)."""
    data = cluster.model_dump()
    data["software"].update(changes)
    return Cluster.model_validate(data)
