"""Step time = pipeline (micro-batches x slowest stage + bubble) + exposed pipeline p2p +
exposed data-parallel reduction + optimizer, with the per-category breakdown.

Pipeline: with per-micro-batch stage times T_i (forward + backward, their TP/CP communication
and exposed ZeRO-3 gathers), m micro-batches and v virtual stages,
    time = m * max_i T_i + (sum_i T_i - max_i T_i) / v
which for equal stages is (m + (p - 1) / v) T: the 1F1B / GPipe bubble (p - 1)/m and the
interleaved (p - 1)/(v m) of Narayanan et al. 2021 (section 2.2). Point-to-point transfers sit on
the critical path: 2 per chunk, (m v + p - 1) chunk slots.
"""

from __future__ import annotations

import numpy as np

from planner.cost.comms import Link
from planner.cost.grad_sync import grad_all_reduce
from planner.cost.compute import Shapes, embedding_times, head_times, layer_times
from planner.cost.shape_cache import by_shape
from planner.cost.efficiency import memory_time, overlapped
from planner.cost.moe_cost import per_moe_layer
from planner.cost.zero import fsdp2_exposed
from planner.cost.params import (layer_params_per_rank, stage_expert_params_per_rank,
                                 stage_params_per_rank, stage_tensor_count)
from planner.hardware import PRECISIONS, Cluster
from planner.moe import moe_layer_count
from planner.plan_arrays import G_PS, R_FULL, R_SELECTIVE, PlanArrays
from planner.stages import heaviest_middle, rank_layers, rank_moe_layers
from planner.transformer import TransformerSpec

CATEGORIES = ("compute", "tp", "cp", "dp", "ep")


def shapes(cluster: Cluster, P: PlanArrays) -> Shapes:
    """Per-plan precision-dependent quantities."""
    peaks = np.array([cluster.gpu.peak_flops(p) or np.nan for p in PRECISIONS])
    fp8, fp32 = P.precision == PRECISIONS.index("fp8"), P.precision == PRECISIONS.index("fp32")
    peak = peaks[P.precision]
    act = np.where(fp32, 4.0, 2.0)
    sp = P.sp | ((P.tp > 1) & cluster.stack.tp_shards_norms)  # torchtitan: TP implies SP
    return Shapes(tp=P.tp.astype(float), cp=P.cp.astype(float), mbs=P.mbs.astype(float),
                  sp=sp, peak=peak, attn_peak=np.where(fp8, peaks[0], peak), fp8=fp8,
                  act_bytes=act, gemm_bytes=np.where(fp8, 1.0, act),
                  cast_bytes=cluster.stack.fp8_cast_bytes_per_element,
                  attn_eff=cluster.gpu.attention_efficiency_by_kernel.get(
                      cluster.stack.attention_kernel),
                  ep=P.ep.astype(float), etp=P.etp.astype(float))


def _per_layer(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
               links: dict[str, Link]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """category -> (forward, backward incl. recompute) seconds of one block, one micro-batch."""
    flash = cluster.stack.flash_attention
    lt = by_shape(lambda s: layer_times(spec, cluster.gpu, s, flash,
                                        cluster.stack.elementwise_traffic), sh)
    full, sel = P.recompute == R_FULL, P.recompute == R_SELECTIVE
    # Selective recompute redoes the attention core (Korthikanti et al. 2022), or in torchtitan's
    # op-level policy every op but the saved ones: sdpa and every other matmul are kept, so the
    # element-wise ops and half the matmuls run again (stack.selective_recompute).
    if cluster.stack.selective_recompute == "ops_half_matmuls":
        selective = lt.fwd - lt.attn_fwd - 0.5 * lt.gemm_fwd
    else:
        selective = lt.attn_fwd
    recompute = np.where(full, lt.fwd, np.where(sel, selective, 0.0))
    # Framework time of re-entering a checkpointed region (calibrated; 0 on GPU stacks).
    recompute = recompute + np.where(full | sel, cluster.stack.recompute_block_overhead_s, 0.0)
    tokens = sh.mbs * spec.seq_len / sh.cp
    # TP: two all-reduces (or all-gather + reduce-scatter with SP, same volume) per direction
    # (Shoeybi et al. 2019, Fig. 4; Korthikanti et al. 2022, Fig. 5); full recompute repeats them.
    sw = cluster.stack
    ar = 2 * links["tp"].all_reduce(sh.act_bytes * tokens * spec.hidden_size)
    # Framework time of a tensor-parallel block (calibrated; 0 on GPU presets), split like its
    # compute: a third forward, two thirds backward.
    over = np.where(P.tp > 1, sw.tp_block_overhead_s + np.where(sh.sp, sw.sp_block_overhead_s,
                                                                0.0), 0.0)
    if sw.tp_comm_overlap:
        # Megatron-Core tp_comm_overlap (Transformer Engine userbuffers) / torchtitan async TP:
        # each all-gather / reduce-scatter is split into chunks pipelined with the GEMM that
        # consumes or produces it, so only what the block's GEMMs cannot cover is exposed, and
        # the GEMMs it runs beside slow down (NVIDIA TE docs, 'Communication overlap with
        # userbuffers'; Wang et al. 2022, 'Overlap communication with dependent computation
        # via decomposition', ASPLOS'23).
        gemm_f, gemm_b = lt.fwd - lt.attn_fwd, lt.bwd - lt.attn_bwd
        tp_f = overlapped(cluster.gpu, ar, gemm_f) + over / 3
        tp_b = overlapped(cluster.gpu, ar, gemm_b) + 2 * over / 3
    else:
        tp_f = ar + over / 3
        tp_b = ar + 2 * over / 3
    tp_b = tp_b + np.where(full, tp_f, 0.0)
    kv_msg = 2 * sh.act_bytes * tokens * spec.kv_dim / sh.tp
    if sw.cp_impl == "ring":
        # CP ring: this rank's K and V chunk passed cp-1 steps forward, K/V and their grads
        # backward, hidden behind the attention compute of the block in flight.
        ring = (sh.cp - 1) * links["cp"].p2p(kv_msg)
        cp_f = overlapped(cluster.gpu, ring, lt.attn_fwd)
        cp_b = overlapped(cluster.gpu, 2 * ring, lt.attn_bwd)
    else:  # all-gather K and V (two calls) before attention; reduce-scatter their grads after
        half = kv_msg / 2 * sh.cp
        cp_f = 2 * links["cp"].all_gather(half)
        cp_b = 2 * links["cp"].reduce_scatter(half)
    # Framework time of a context-parallel block (calibrated; 0 on GPU stacks), split like its
    # compute: a third forward, two thirds backward.
    cp_over = np.where(sh.cp > 1, sw.cp_block_overhead_s, 0.0)
    cp_f, cp_b = cp_f + cp_over / 3, cp_b + 2 * cp_over / 3
    cp_b = cp_b + np.where(full, cp_f, 0.0)
    # ZeRO-3 as DeepSpeed: gather the block's weights before forward and backward (and again
    # for the recomputed forward), reduce-scatter its grads, every micro-batch; prefetched behind
    # the previous block's compute. (FSDP2's per-step pattern is in planner/cost/zero.py.)
    wbytes = layer_params_per_rank(spec, sh.tp) * np.where(P.precision == 3, 4.0, 2.0)
    z3 = (P.zero >= 3) & (sw.zero_impl == "deepspeed")
    ag, rs = links["dpcp"].all_gather(wbytes), links["dpcp"].reduce_scatter(wbytes)
    gathers_b = 1.0 + np.where(full & (sw.zero_impl == "deepspeed"), 1.0, 0.0)
    dp_f = np.where(z3, overlapped(cluster.gpu, ag, lt.fwd + tp_f), 0.0)
    dp_b = np.where(z3, overlapped(cluster.gpu, gathers_b * ag + rs, lt.bwd + recompute + tp_b),
                    0.0)
    zero = np.zeros(len(P))
    return {"compute": (lt.fwd, lt.bwd + recompute), "tp": (tp_f, tp_b), "cp": (cp_f, cp_b),
            "dp": (dp_f, dp_b), "ep": (zero, zero)}


def _stages(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
            links: dict[str, Link]) -> dict[str, np.ndarray]:
    """Per-micro-batch time of the slowest pipeline rank by category, and the sum over ranks.
    Ranks hold different numbers of blocks when they do not divide (planner.stages.layer_split);
    the first holds the embedding, the last the head."""
    per = _per_layer(spec, cluster, P, sh, links)
    per_moe = per_moe_layer(spec, cluster, P, sh, links, per) if spec.moe else per
    dense_l = {c: f + b for c, (f, b) in per.items()}
    moe_l = {c: f + b for c, (f, b) in per_moe.items()}
    L = spec.num_layers
    ranks = (np.zeros(len(P)), P.pp - 1)
    n_first, n_last = (rank_layers(L, P.pp, P.vpp, r) for r in ranks)
    e_first, e_last = (rank_moe_layers(spec, P.pp, P.vpp, r) for r in ranks)
    mid_rank = heaviest_middle(P.pp)
    n_mid = np.where(mid_rank > 0, rank_layers(L, P.pp, P.vpp, np.maximum(mid_rank, 0)), 0)
    e_mid = np.where(mid_rank > 0, rank_moe_layers(spec, P.pp, P.vpp, np.maximum(mid_rank, 0)), 0)

    def blocks(n, k, d):  # n blocks of which k are MoE, per category
        return {c: (n - k) * d[c] + k * moe_l[c] for c in d}
    ef, eb = by_shape(lambda s: embedding_times(spec, cluster.gpu, s), sh)
    hf, hb = by_shape(lambda s: head_times(spec, cluster.gpu, s), sh)
    tokens = sh.mbs * spec.seq_len / sh.cp
    ce_comm = 3 * links["tp"].all_reduce(4.0 * tokens)  # vocab-parallel max, sum, target logit
    one = P.pp == 1
    emb = {"compute": ef + eb, "tp": _embedding_comm(spec, P, sh, links["tp"])}
    head = {"compute": hf + hb, "tp": ce_comm}
    first = {c: v + emb.get(c, 0) + np.where(one, head.get(c, 0), 0)
             for c, v in blocks(n_first, e_first, dense_l).items()}
    last = {c: v + head.get(c, 0) for c, v in blocks(n_last, e_last, dense_l).items()}
    mid = blocks(n_mid, e_mid, dense_l)
    t = {k: sum(d.values()) for k, d in (("first", first), ("last", last), ("mid", mid))}
    t_last = np.where(one, 0.0, t["last"])
    slow = {c: np.select([t["first"] >= np.maximum(t_last, t["mid"]), t_last >= t["mid"]],
                         [first[c], last[c]], mid[c]) for c in dense_l}
    t_max = sum(slow.values())
    n_moe = moe_layer_count(spec)
    t_sum = (sum(blocks(L, n_moe, dense_l).values()) + sum(emb.values())
             + sum(head.values()))
    # The last micro-batch's backward through the first rank's blocks: what gradient reduction
    # hides behind (that rank finishes its backward last).
    dense_b = sum(b for _, b in per.values())
    dense_f = sum(f for f, _ in per.values())
    window = (n_first - e_first) * dense_b + e_first * sum(b for _, b in per_moe.values())
    fwd_window = ((n_first - e_first) * dense_f
                  + e_first * sum(f for f, _ in per_moe.values()))  # the first forward, next step
    return {**{f"max_{c}": v for c, v in slow.items()}, "t_max": t_max, "t_sum": t_sum,
            "bwd_window": window, "fwd_window": fwd_window}


def _embedding_comm(spec: TransformerSpec, P: PlanArrays, sh: Shapes, link: Link) -> np.ndarray:
    """The vocab-parallel embedding's collective per micro-batch (Shoeybi et al. 2019, section
    3): each tp rank looks up the tokens its rows own and the partial outputs are summed, an
    all-reduce forward (identity backward), or with sequence parallelism a reduce-scatter forward
    and an all-gather backward (Korthikanti et al. 2022, section 4.2.2). Learned positions are
    summed into the same collective (executor/parallel/vocab.py; Megatron-LM adds them first)."""
    msg = sh.act_bytes * sh.mbs * spec.seq_len / sh.cp * spec.hidden_size
    sp = link.reduce_scatter(msg) + link.all_gather(msg)
    return np.where(P.tp > 1, np.where(sh.sp, sp, link.all_reduce(msg)), 0.0)


def _stage_params(spec: TransformerSpec, P: PlanArrays,
                  sh: Shapes) -> tuple[np.ndarray, np.ndarray]:
    """Parameters of the most loaded pipeline rank (first, heaviest middle or last): (the
    dense part, tp-split and replicated over dp x cp; the routed experts, split over ep x etp
    and replicated over edp: zeros for a dense spec)."""
    L, one = spec.num_layers, P.pp == 1
    mid_rank = heaviest_middle(P.pp)
    ranks = (np.zeros(len(P)), P.pp - 1, np.maximum(mid_rank, 0))
    flags = ((True, one), (one, True), (False, False))
    dense, experts = [], []
    for r, (first, last) in zip(ranks, flags):
        n, k = rank_layers(L, P.pp, P.vpp, r), rank_moe_layers(spec, P.pp, P.vpp, r)
        dense.append(stage_params_per_rank(spec, sh.tp, n, first, last, k))
        experts.append(stage_expert_params_per_rank(spec, sh.ep, sh.etp, k))
    has_mid = mid_rank > 0
    return tuple(np.maximum(np.maximum(a, b), np.where(has_mid, c, 0.0))
                 for a, b, c in (dense, experts))


def _dp_exposed(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
                links: dict[str, Link], window: np.ndarray, fwd_window: np.ndarray,
                stage: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Gradient reduction (and ZeRO-1/2 parameter all-gather) not hidden behind backward;
    `stage`: _stage_params."""
    params, expert_params = stage
    g = params * np.where(P.precision == 3, 4.0, 2.0)
    link, sw = links["dpcp"], cluster.stack
    if sw.zero_impl == "fsdp2":
        fsdp = fsdp2_exposed(spec, cluster, P, sh, link, window)
    else:
        fsdp = np.zeros(len(P))
    reduce = np.where(P.zero == 0, grad_all_reduce(cluster, P, link, g), link.reduce_scatter(g))
    if spec.moe is not None:
        # Routed experts' gradients are reduced over edp, the ranks holding the same experts
        # (Megatron-Core's expert data-parallel group), in the same backward window.
        ge = expert_params * np.where(P.precision == 3, 4.0, 2.0)
        edp = links["edp"]
        reduce = reduce + np.where(P.zero == 0, edp.all_reduce(ge), edp.reduce_scatter(ge))
    tail = reduce * np.minimum(1.0, sw.grad_bucket_bytes / g)  # the last bucket never overlaps
    if sw.grad_overlap:
        exposed = np.maximum(tail, overlapped(cluster.gpu, reduce, window))
    else:
        exposed = reduce
    exposed = np.where(P.zero == 2, P.micro_batches * exposed, exposed)
    gather = link.all_gather(g)
    if spec.moe is not None:
        gather = gather + links["edp"].all_gather(ge)
    if sw.param_gather_overlap:
        # Megatron overlap_param_gather: the updated shards are gathered bucket by bucket
        # behind the next step's forward; the first bucket is exposed (Megatron-Core
        # DistributedDataParallelConfig.overlap_param_gather; NeMo communication_overlap docs).
        first = gather * np.minimum(1.0, sw.grad_bucket_bytes / g)
        gather = np.maximum(first, overlapped(cluster.gpu, gather, fwd_window))
    gather = np.where((P.zero == 1) | (P.zero == 2), gather, 0.0)
    deepspeed = np.where(P.zero < 3, exposed + gather, 0.0)
    ddp = exposed + sw.dp_step_overhead_s
    if spec.moe is not None and sw.zero_impl == "fsdp2":
        # FSDP2 shards expert weights over edp (torchtitan / AutoModel: the expert mesh's
        # dp_shard_mod_ep): gathered before the forward (and each backward at stage 3),
        # reduce-scattered once, behind the stage's compute where the stack overlaps.
        edp = links["edp"]
        gathers = np.where(P.zero >= 3, 1 + P.micro_batches, 1)
        comm = gathers * edp.all_gather(ge) + edp.reduce_scatter(ge)
        hidden = (P.micro_batches * (window + fwd_window) if sw.grad_overlap
                  else np.zeros(len(P)))
        fsdp = fsdp + overlapped(cluster.gpu, comm, hidden)
    out = np.where(P.zero == 0, ddp, np.where(sw.zero_impl == "fsdp2", fsdp, deepspeed))
    return np.where((P.dp * P.cp > 1) | (P.edp > 1), out, 0.0)


def _optimizer(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
               links: dict[str, Link], stage: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The step's epilogue. Adam, memory-bound: fp32 master weight, m and v read and written
    (24 bytes), the gradient read twice (norm for clipping, update) and the 16-bit weight
    written; plus a fixed cost per parameter tensor, and the small collectives every step
    makes: the global gradient norm (over tp, dp x cp when sharded, and pp) and the loss
    reported as the global-batch mean (over pp and dp x cp)."""
    # A parameter server's shard owner runs Adam on 1/S of the model (planner/cost/grad_sync.py).
    shards = np.where(P.zero >= 1, P.dp * P.cp, np.where(P.grad_sync == G_PS,
                                                          np.maximum(P.ps_servers, 1), 1))
    params, expert_params = stage
    params = params / shards
    if spec.moe is not None:  # expert state shards over edp under ZeRO (distributed optimizer)
        params = params + expert_params / np.where(P.zero >= 1, P.edp, 1)
    per_param = np.where(P.precision == 3, 24.0 + 2 * 4.0, 24.0 + 2 * 2.0 + 2.0)
    tensors = stage_tensor_count(spec, rank_layers(spec.num_layers, P.pp, P.vpp,
                                                   np.zeros(len(P))), True, P.pp == 1)
    scalar = 4.0
    sharded = (P.zero >= 1) & (P.dp * P.cp > 1)
    small = (links["tp"].all_reduce(scalar) + np.where(sharded, links["dpcp"].all_reduce(
        scalar), 0.0) + 2 * links["pp"].all_reduce(scalar) + links["dpcp"].all_reduce(scalar))
    return (memory_time(cluster.gpu, params * per_param)
            + tensors * cluster.stack.optimizer_tensor_overhead_s + small)


def step_breakdown(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
                   links: dict[str, Link]) -> dict[str, np.ndarray]:
    """Seconds per step by category; they add up to `step_time_s`."""
    st = _stages(spec, cluster, P, sh, links)
    stage = _stage_params(spec, P, sh)  # gradient sync and optimizer share it
    m, v = P.micro_batches.astype(float), P.vpp.astype(float)
    msg = sh.act_bytes * sh.mbs * spec.seq_len / sh.cp * spec.hidden_size / sh.tp
    slots = m * v + P.pp - 1  # chunk slots on the critical path
    pp_comm = np.where(P.pp > 1, (2 * links["pp"].p2p(msg)
                                  + cluster.stack.pp_microbatch_overhead_s) * slots, 0.0)
    out = {
        "compute_s": m * st["max_compute"],
        "tp_comm_s": m * st["max_tp"],
        "cp_comm_s": m * st["max_cp"],
        "ep_comm_s": m * st["max_ep"],
        "pp_comm_s": pp_comm,
        "dp_comm_s": m * st["max_dp"] + _dp_exposed(spec, cluster, P, sh, links, st["bwd_window"],
                                                     st["fwd_window"], stage),
        # Clamped: with one stage t_sum and t_max are the same sum in another order, and the
        # float difference can come out -1e-20 (tests/test_stack_properties.py found it).
        "bubble_s": np.maximum(0.0, st["t_sum"] - st["t_max"]) / v,
        "optimizer_s": _optimizer(spec, cluster, P, sh, links, stage),
    }
    out["step_time_s"] = sum(out.values())
    return out
