"""Tier 1: DeepSpeed ZeRO-3's module-by-module gathers (planner/cost/deepspeed_zero3.py) by hand,
and the ZeRO-3 rows of Narayanan et al. 2021 Table 2 they were built for."""

from __future__ import annotations

import numpy as np
import pytest

from planner.cost.deepspeed_zero3 import module_params, zero3_block_times
from planner.hardware import load_cluster
from planner.stack import load_stack
from planner.transformer import TransformerSpec, load_transformer

GPT = TransformerSpec(name="gpt-like", num_layers=4, hidden_size=1024, num_attention_heads=8, num_kv_heads=8,
                      ffn_hidden_size=4096, vocab_size=1000, seq_len=128, mlp="gelu")
ONE = np.array([1.0])


def test_megatron_modules_of_a_gpt_block():
    """Fused QKV (3 h^2), output projection (h^2), fc1 and fc2 (4 h^2 each), split over tp."""
    h2 = 1024.0 ** 2
    assert [float(p[0]) for p in module_params(GPT, ONE)] == [3 * h2, h2, 4 * h2, 4 * h2]
    assert [float(p[0]) for p in module_params(GPT, np.array([2.0]))] == [1.5 * h2, h2 / 2,
                                                                         2 * h2, 2 * h2]
    llama = load_transformer("llama3-8b")  # GQA 32/8 heads, SwiGLU: gate and up in one fc1
    qkv, proj, fc1, fc2 = (float(p[0]) for p in module_params(llama, ONE))
    assert qkv == 4096 * (4096 + 2 * 1024) and proj == 4096 ** 2
    assert fc1 == 4096 * 2 * 14336 and fc2 == 14336 * 4096


def test_mla_modules_are_its_matrices_with_the_down_projections_whole():
    """DeepSeek-V3's MLA: q down / up, kv down (with the shared rotary key) / up, output
    projection, each a module; the down-projections stay whole under tp (as Megatron-Core)."""
    ds = load_transformer("deepseek-v3")
    one, two = module_params(ds, ONE), module_params(ds, np.array([2.0]))
    assert len(one) == 5 + 2
    for i, (a, b) in enumerate(zip(one, two)):
        whole = i in (0, 2)  # linear_q_down_proj, linear_kv_down_proj
        assert float(b[0]) == (float(a[0]) if whole else float(a[0]) / 2), i


def _times(slowdown: float, limit: float | None, fwd: float, bwd: float, full: bool,
           gather_s_per_param: float, scatter_s_per_param: float = 0.0):
    gpu = load_cluster("dgx_a100_80g").gpu.model_copy(update={"overlap_compute_slowdown": slowdown})
    stack = load_stack("deepspeed").model_copy(update={"zero3_max_reuse_distance_params": limit})
    params = module_params(GPT, ONE)
    f, b = zero3_block_times(gpu, stack, params, 2, lambda n: n * gather_s_per_param,
                             lambda n: n * scatter_s_per_param, np.array([fwd]),
                             np.array([0.0]), np.array([bwd]), np.array([0.0]),
                             np.array([full]))
    return float(f[0]), float(b[0])


def test_a_big_gather_behind_a_small_gemm_stays_exposed():
    """Modules 3, 1, 4, 4 (units of h^2 params); forward compute 12 units of 1 s, gathers 1 s a
    unit: the block's gathers (12 s) equal its compute, so one block-wide overlap would expose
    nothing. Module by module, without slowdown: max(3, 1) + max(1, 4) + max(4, 4) + max(4, 3)
    = 3 + 4 + 4 + 4 = 15 s, 3 s exposed (fc1's gather behind the output projection)."""
    unit = 1024.0 ** 2
    f, _ = _times(0.0, None, fwd=12.0, bwd=24.0, full=False, gather_s_per_param=1 / unit)
    assert f == pytest.approx(3.0)


def test_slowdown_charges_the_compute_a_shorter_gather_runs_beside():
    """Gathers 0.25 s a unit beside 1 s a unit of compute, none longer than the module it runs
    beside (fc1's 1 s beside the projection's 1 s): each pair costs s x its gather. At 0.5 s a
    unit fc1's 2 s gather outlasts the projection and exposes 1 s instead of 0.2 x 2."""
    unit = 1024.0 ** 2
    f, _ = _times(0.2, None, fwd=12.0, bwd=24.0, full=False, gather_s_per_param=0.25 / unit)
    assert f == pytest.approx(0.2 * 0.25 * (1 + 4 + 4 + 3))
    f, _ = _times(0.2, None, fwd=12.0, bwd=24.0, full=False, gather_s_per_param=0.5 / unit)
    assert f == pytest.approx(0.2 * 0.5 + 1.0 + 0.2 * 2 + 0.2 * 1.5)


def test_kept_weights_skip_the_second_gather():
    """Comm-bound (no compute): the backward of a full-recompute block is all its link time,
    recomputed-forward gathers (12 units) + backward gathers + reduce-scatters (12). The last
    module's weights always stay (reuse distance 0); fc1 stays when 2 x fc2 (8 units) is under
    the limit; with no limit nothing stays."""
    unit = 1024.0 ** 2
    tiny = 1e-12

    def bwd(limit):
        return _times(0.0, limit, fwd=tiny, bwd=tiny, full=True, gather_s_per_param=1 / unit,
                      scatter_s_per_param=1 / unit)[1]
    assert bwd(None) == pytest.approx(12 + 12 + 12)
    assert bwd(1.0) == pytest.approx(12 + 8 + 12)          # fc2 kept
    assert bwd(8 * unit + 1) == pytest.approx(12 + 4 + 12)  # fc2 and fc1 (distance 8 units)


def test_without_recompute_every_backward_gathers():
    unit = 1024.0 ** 2
    _, b = _times(0.0, 1e30, fwd=1e-12, bwd=1e-12, full=False, gather_s_per_param=1 / unit,
                  scatter_s_per_param=1 / unit)
    assert b == pytest.approx(12 + 12)


def test_table2_zero3_rows_strong_scaling_shape():
    """Narayanan et al. 2021 Table 2: GPT-175B under ZeRO-3 keeps its step time from 768 to
    1536 GPUs (comm-bound: the per-GPU gathered bytes do not shrink with dp) while 384 GPUs,
    with twice the compute per GPU, is slower. The model shows the same shape: 384 slower than
    768, and 1536 within 5% of 768."""
    from planner.validation import compare, load_runs
    rows = {c.run.name.rsplit("-", 1)[-1]: c.prediction["step_time_s"]
            for c in compare([r for r in load_runs() if "zero3-gpt-175b" in r.name])}
    assert rows["384gpu"] > rows["768gpu"]
    assert rows["1536gpu"] == pytest.approx(rows["768gpu"], rel=0.05)
