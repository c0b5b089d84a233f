"""Issue 11: what `search` emits and writes, one batch rule for search and estimate, and sources
that say what a number really is."""

from __future__ import annotations

import json

import pytest

from planner.calibration import profile_dict
from planner.cli import main
from planner.commands.common import load_plan_with_meta
from planner.cost.evaluate import predict
from planner.hardware import Cluster, load_cluster
from planner.plan import Plan
from planner.search.search import REDUNDANT, search
from planner.search.space import Space, batch_sequences
from planner.transformer import TransformerSpec, load_transformer
from planner.validity import plan_problems

ZERO1 = REDUNDANT["zero1_under_fsdp2"][0]


def test_fsdp2_search_emits_one_of_zero_stages_1_and_2(monkeypatch):
    """Under FSDP2 stages 1 and 2 are the same plan (same time, same memory), so the search
    keeps stage 2 only and counts every stage-1 twin of a kept stage-2 plan under a reason that
    says why; under DeepSpeed, and under Megatron-Core (its stage 2 is Megatron-FSDP, which
    reduce-scatters every backward), they differ and both stay."""
    spec = load_transformer("llama2-7b")
    h100 = load_cluster("dgx_h100", stack="torchtitan")
    assert h100.stack.zero_impl == "fsdp2"
    twins = [Plan(dp=4, tp=1, pp=2, micro_batch_size=1, global_batch_size=64, zero_stage=z)
             for z in (1, 2)]
    a, b = (predict(spec, h100, p) for p in twins)
    assert a["step_time_s"] == b["step_time_s"] and a["memory"] == b["memory"]
    # Keep every plan that does not fit too, so the twins can be counted over all valid plans.
    monkeypatch.setattr("planner.search.search.KEEP_NOT_FITTING", 10**9)
    res = search(spec, h100, 64)
    zeros = [res.plan(i).zero_stage for i in range(len(res.plans))]
    assert 1 not in zeros and 2 in zeros
    assert res.pruned[ZERO1] == zeros.count(2)
    assert "stage 2 is kept" in res.examples[ZERO1]
    a100 = search(spec, load_cluster("dgx_a100_80g", stack="deepspeed"), 64)  # stage 1 its own plan
    assert ZERO1 not in a100.pruned
    assert any(a100.plan(i).zero_stage == 1 for i in range(a100.valid))
    # Megatron-Core: stage 1 is its own plan unless one micro-batch and one stage make the
    # two syncs the same.
    mc = search(spec, load_cluster("dgx_h100"), 64)
    z1 = [p for p in (mc.plan(i) for i in range(len(mc.plans))) if p.zero_stage == 1]
    assert z1 and all(p.num_micro_batches > 1 or p.pp > 1 for p in z1)
    assert mc.pruned.get(ZERO1, 0) > 0


@pytest.mark.parametrize("layers", [3, 32, 96, 126])
def test_virtual_stages_reach_megatrons_bound(layers):
    """The v domain ends where Megatron-LM's does: each chunk but the first and the last
    (which may hold only the embedding and the head: --account-for-embedding-in-pipeline-split,
    --account-for-loss-in-pipeline-split) needs a layer, pp >= 2, so v <= (layers + 2) // 2;
    the deepest such plan is valid and one deeper is not."""
    space = Space.build(8, layers, 64, "bf16")
    v = (layers + 2) // 2
    assert int(space.vpp.max()) == max(1, v)
    spec = TransformerSpec(name="t", num_layers=layers, hidden_size=256, num_attention_heads=4,
                           num_kv_heads=4, ffn_hidden_size=1024, vocab_size=1000, seq_len=128)
    c = load_cluster("dgx_h100")
    base = dict(dp=4, tp=1, pp=2, micro_batch_size=1, global_batch_size=64,
                schedule="interleaved_1f1b")
    if v >= 2:
        assert plan_problems(Plan(**base, virtual_pipeline_stages=v), spec, c) == []
    assert plan_problems(Plan(**base, virtual_pipeline_stages=v + 1), spec, c)


def _search(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["search", "-q", *args])
    return code, capsys.readouterr().out


def test_best_plan_file_records_the_model_and_never_goes_stale(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fit = ["-t", "llama2-7b", "-c", "dgx_a100_80g", "-b", "64"]
    code, out = _search(capsys, *fit)
    assert code == 0 and "best plan written to best_plan.json (try" in out
    plan, meta = load_plan_with_meta("best_plan.json")
    assert TransformerSpec.model_validate(meta["transformer"]) == load_transformer("llama2-7b")
    assert meta["cluster"] == "dgx_a100_80g" and plan.global_batch_size == 64
    assert predict(load_transformer("llama2-7b"), load_cluster("dgx_a100_80g"), plan)["fits"]
    assert main(["predict", "-t", "llama2-7b", "-c", "dgx_h100", "--plan", "best_plan.json"]) == 0
    assert "the plan was searched for cluster 'dgx_a100_80g'" in capsys.readouterr().err
    code, out = _search(capsys, *fit)
    assert "best plan written to best_plan.json, replacing the earlier file" in out
    code, out = _search(capsys, "-t", "llama3-405b", "-c", "dgx_a100_40g", "-b", "8")
    assert code == 1 and not (tmp_path / "best_plan.json").exists()
    assert "removed best_plan.json: it held an earlier search's plan" in out
    code, out = _search(capsys, "-t", "llama3-405b", "-c", "dgx_a100_40g", "-b", "8")
    assert "wrote no best_plan.json: no plan fits" in out
    assert not list(tmp_path.iterdir())  # no temp files either


def test_search_and_estimate_default_to_the_same_batch(tmp_path, monkeypatch, capsys):
    """One rule: 4 x 2^20 tokens over the sequence length, to the nearest power of two, whatever
    the GPU count. Llama 3 8B (8,192 tokens) on 24 GPUs: 2^22 / 2^13 = 512 sequences."""
    monkeypatch.chdir(tmp_path)
    assert main(["search", "-q", "-t", "llama3-8b", "-n", "3", "--json", "--out", "-"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["top"][0]["plan"]["global_batch_size"] == 512 and s["global_batch_size"] == 512
    assert main(["estimate", "-q", "-t", "llama3-8b", "--tokens", "1T", "--gpus", "h100",
                 "--num-gpus", "24", "--json", "--html", "-"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert e["options"][0]["plan"]["global_batch_size"] == 512
    assert batch_sequences(4 * 2**20, 3000) == 1024  # 1398 sequences: 2^10.45 -> 2^10
    assert batch_sequences(4 * 2**20, 2**23) == 1


def _raw() -> dict:
    """A minimal raw calibration (the shape executor/calibrate.py writes)."""
    gemm = [{"dtype": d, "m": n, "k": n, "n": n, "seconds": n ** 3 * 2e-11}
            for d in ("float32", "bfloat16") for n in (64, 256)]
    rank = {"compute": {"gemm": gemm, "dispatch_s": 1e-6,
                        "memory": [{"bytes": b, "seconds": b * 1e-10} for b in (1e5, 1e7)],
                        "attention": [{"flops": 1e9, "seconds": 1e-2}],
                        "optimizer": {"seconds": 1e-3, "tensors": 10}},
            "p2p": [{"bytes": b, "seconds": 1e-5 + b * 1e-10} for b in (1e3, 1e6)],
            "collectives": [{"op": "all_reduce", "n": 2, "bytes": b, "seconds": 2e-5 + b * 1e-10}
                            for b in (1e3, 1e6)]}
    return {"world": 2, "threads": 1, "host": "h", "cpu": "c", "cores": 2, "torch": "2",
            "backend": "gloo", "date": "2026-01-01", "memory_bytes": 2**34, "ranks": [rank, rank]}


def test_calibrated_profile_does_not_claim_unmeasured_numbers():
    """grad_bucket_bytes is a code default and framework_memory_bytes a fixed 0: their sources
    must say so, not 'measured by paraplan calibrate'."""
    prof = profile_dict(_raw(), "cpu")
    Cluster.model_validate(prof)
    for key in ("grad_bucket_bytes", "framework_memory_bytes"):
        src = prof["stack"]["sources"][key]
        assert src.startswith("not measured"), src
    assert prof["sources"]["intra_node.bandwidth_GBps"].startswith("measured by")
