"""The parameter server (executor/parallel/ps.py) trains exactly as DDP: 2 gloo processes, tiny
model, fp32, 3 steps; losses and final parameters equal to 1e-5, with 1 and 2 servers."""

from __future__ import annotations

import pytest
import torch

from executor.local import run_plans
from executor.train import TrainConfig
from planner.plan import Plan
from planner.transformer import load_transformer

BASE = dict(dp=2, tp=1, pp=1, micro_batch_size=1, global_batch_size=4, precision="fp32")


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    spec = load_transformer("tiny")
    jobs = [("ddp", spec, Plan(**BASE)),
            ("ps1", spec, Plan(grad_sync="parameter_server", ps_servers=1, **BASE)),
            ("ps2", spec, Plan(grad_sync="parameter_server", ps_servers=2, **BASE))]
    return run_plans(2, jobs, TrainConfig(steps=3, warmup=0), want_params=True)


@pytest.mark.parametrize("key", ["ps1", "ps2"])
def test_ps_equals_ddp(results: dict[str, dict], key: str) -> None:
    ddp, ps = results["ddp"], results[key]
    assert ps["losses"] == pytest.approx(ddp["losses"], abs=1e-5)
    for name, want in ddp["params"].items():
        assert torch.allclose(torch.tensor(ps["params"][name]), torch.tensor(want), atol=1e-5), name


def test_dedicated_refused() -> None:
    from executor.parallel.ps import check_plan
    with pytest.raises(ValueError, match="colocated"):
        check_plan(Plan(grad_sync="parameter_server", ps_servers=1, ps_placement="dedicated",
                        **BASE))
