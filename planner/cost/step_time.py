"""Step time = pipeline (micro-batches x slowest stage + bubble) + exposed pipeline p2p +
exposed data-parallel reduction + the host time the GPU waits for (planner/cost/host.py) +
optimizer, with the per-category breakdown.

Pipeline: with per-micro-batch stage times T_i (forward + backward, their TP/CP communication
and exposed ZeRO-3 gathers), m micro-batches and v virtual stages,
    time = m * max_i T_i + (sum_i T_i - max_i T_i) / v
which for equal stages is (m + (p - 1) / v) T: the 1F1B / GPipe bubble (p - 1)/m and the
interleaved (p - 1)/(v m) of Narayanan et al. 2021 (section 2.2). Point-to-point transfers sit on
the critical path: 2 per chunk, (m v + p - 1) chunk slots. A step of n pipeline passes (schedules
of m / n micro-batches each, plan.pipeline_passes) pays the bubble and the p - 1 fill slots n
times.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from planner.cost.comms import Link
from planner.cost.compute import Shapes, embedding_times, head_times, layer_times
from planner.cost.deepspeed_zero3 import module_params, zero3_block_times
from planner.cost.dp_sync import SYNC_FIELDS, dp_exposed, sync_terms
from planner.cost.efficiency import overlapped
from planner.cost.host import host_exposed
from planner.cost.moe_cost import per_moe_layer
from planner.cost.shape_cache import by_shape, on_groups
from planner.cost.stage_blocks import stage_blocks
from planner.cost.widths import grad_bytes, weight_bytes
from planner.cost.zero import fsdp2_overlaps, zero_reduce
from planner.hardware import PRECISIONS, Cluster
from planner.moe import moe_layer_count
from planner.plan_arrays import R_FULL, R_SELECTIVE, PlanArrays
from planner.stages import heaviest_middle
from planner.transformer import TransformerSpec

CATEGORIES = ("compute", "tp", "cp", "dp", "ep", "host")
# What _block_terms reads ("layout": tp, cp, pp, dp, order, ep, etp; with micro-batch, sequence
# parallelism and precision, the Shapes): no virtual stage, schedule or micro-batch count, and
# the ZeRO stage only through DeepSpeed's ZeRO-3 gathers (_per_layer: z3).
BLOCK_FIELDS = ("layout", "mbs", "sp", "precision", "recompute")


def _block_fields(cluster: Cluster) -> tuple[str, ...]:
    return BLOCK_FIELDS + (("zero",) if cluster.stack.zero_impl == "deepspeed" else ())


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
                  ep=P.ep.astype(float), etp=P.etp.astype(float), stack=cluster.stack, plans=P)


def _per_layer(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
               links: Mapping[str, Link]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
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
    # ZeRO-3 as DeepSpeed: gather each module's weights before its forward and backward (and
    # again for the recomputed forward), reduce-scatter its grads, every micro-batch, one module
    # ahead of the compute (planner/cost/deepspeed_zero3.py). (FSDP2's per-step pattern is in
    # planner/cost/zero.py.)
    zero = np.zeros(len(P))
    dp_f = dp_b = zero
    z3 = (P.zero >= 3) & (sw.zero_impl == "deepspeed")
    if z3.any():
        wb, gb = weight_bytes(P), grad_bytes(P, sw)
        # They run on during the block's exposed TP and CP time as during its compute (another
        # link), so the whole block is their window.
        fwd = lt.fwd + tp_f + cp_f
        rec = np.where(full, fwd, 0.0)
        mods = module_params(spec, sh.tp)  # the attention's linears, then the MLP's two
        f, b = zero3_block_times(
            cluster.gpu, sw, mods, len(mods) - 2,
            lambda n: links["zshard"].all_gather(n * wb), lambda n: zero_reduce(P, links, n * gb),
            fwd, lt.attn_fwd, lt.bwd + recompute + tp_b + cp_b - rec, lt.attn_bwd, full)
        dp_f, dp_b = np.where(z3, f, 0.0), np.where(z3, b, 0.0)
    return {"compute": (lt.fwd, lt.bwd + recompute), "tp": (tp_f, tp_b), "cp": (cp_f, cp_b),
            "dp": (dp_f, dp_b), "ep": (zero, zero)}


def _block_terms(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
                 links: Mapping[str, Link]) -> dict[str, np.ndarray]:
    """Everything _stages and step_breakdown read of one block, the embedding, the head and a
    pipeline hop per micro-batch: dense and MoE blocks by category (forward + backward) and
    their forward and backward sums, the whole model's blocks, embedding and head once
    (`t_sum`), a hop's p2p time, FSDP2's prefetch overlaps. Reads _block_fields only."""
    per = _per_layer(spec, cluster, P, sh, links)
    per["host"] = host_exposed(spec, cluster, P, sh, per, moe=False)
    moe = per_moe_layer(spec, cluster, P, sh, links, per) if spec.moe else None
    if moe is not None:  # a new dict: the dense block's own host time stays in `per`
        moe["host"] = host_exposed(spec, cluster, P, sh, moe, moe=True)
    out = {}
    for name, d in (("dense", per), ("moe", moe)):
        if d is not None:
            out.update({f"{name}.{c}": f + b for c, (f, b) in d.items()})
            out[f"{name}.fwd"] = sum(f for f, _ in d.values())
            out[f"{name}.bwd"] = sum(b for _, b in d.values())
    ef, eb = by_shape(lambda s: embedding_times(spec, cluster.gpu, s), sh)
    hf, hb = by_shape(lambda s: head_times(spec, cluster.gpu, s,
                                           cluster.stack.loss_softmax_bytes), sh)
    tokens = sh.mbs * spec.seq_len / sh.cp
    ce_comm = 3 * links["tp"].all_reduce(4.0 * tokens)  # vocab-parallel max, sum, target logit
    emb = {"compute": ef + eb, "tp": _embedding_comm(spec, P, sh, links["tp"])}
    head = {"compute": hf + hb, "tp": ce_comm}
    out.update({f"emb.{c}": v for c, v in emb.items()})
    out.update({f"head.{c}": v for c, v in head.items()})
    dense_l = {c: out[f"dense.{c}"] for c in CATEGORIES}
    moe_l = {c: out[f"moe.{c}"] for c in CATEGORIES} if spec.moe else dense_l
    L, n_moe = spec.num_layers, moe_layer_count(spec)
    out["t_sum"] = (sum((L - n_moe) * dense_l[c] + n_moe * moe_l[c] for c in dense_l)
                    + sum(emb.values()) + sum(head.values()))
    msg = sh.act_bytes * sh.mbs * spec.seq_len / sh.cp * spec.hidden_size / sh.tp
    out["pp_hop"] = 2 * links["pp"].p2p(msg) + cluster.stack.pp_microbatch_overhead_s
    if cluster.stack.zero_impl == "fsdp2" and cluster.stack.grad_overlap:
        # A unit's gather hides behind a block's time, averaged over the model's dense and MoE
        # blocks as the gathered unit is (zero.fsdp2_block_params).
        unit = per if moe is None else _mean_block(spec, per, moe)
        out["fsdp.ov_f"], out["fsdp.win_f"], out["fsdp.win_b"] = fsdp2_overlaps(
            spec, cluster, P, sh, links["zshard"], unit)
    return out


def _mean_block(spec: TransformerSpec, dense: dict[str, tuple[np.ndarray, np.ndarray]],
                moe: dict[str, tuple[np.ndarray, np.ndarray]]
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A block's (forward, backward) seconds by category averaged over the model's dense and MoE
    blocks."""
    L, k = spec.num_layers, moe_layer_count(spec)
    return {c: tuple(((L - k) * d + k * m) / L for d, m in zip(dense[c], moe[c])) for c in dense}


def _stages(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
            links: Mapping[str, Link]) -> dict[str, np.ndarray]:
    """Per-micro-batch time of the slowest pipeline rank by category, and the sum over ranks.
    Ranks hold different numbers of blocks when they do not divide (planner.stages.layer_split);
    the first holds the embedding, the last the head. The per-block terms are computed once
    per distinct _block_fields combination (they read no virtual stage or schedule)."""
    lay = on_groups(lambda p, s, ln: _block_terms(spec, cluster, p, s, ln), P, sh, links,
                    P.groups(*_block_fields(cluster)))
    dense_l = {c: lay[f"dense.{c}"] for c in CATEGORIES}
    moe_l = {c: lay[f"moe.{c}"] for c in CATEGORIES} if spec.moe else dense_l
    moe_name = "moe" if spec.moe else "dense"
    sb = stage_blocks(spec, P)
    n_first, n_last, e_first, e_last = (sb["first_layers"], sb["last_layers"], sb["first_moe"],
                                        sb["last_moe"])
    mid_rank = heaviest_middle(P.pp)
    n_mid = np.where(mid_rank > 0, sb["mid_layers"], 0)
    e_mid = np.where(mid_rank > 0, sb["mid_moe"], 0)

    def blocks(n, k, d):  # n blocks of which k are MoE, per category
        return {c: (n - k) * d[c] + k * moe_l[c] for c in d}
    one = P.pp == 1
    emb = {"compute": lay["emb.compute"], "tp": lay["emb.tp"]}
    head = {"compute": lay["head.compute"], "tp": lay["head.tp"]}
    first = {c: v + emb.get(c, 0) + np.where(one, head.get(c, 0), 0)
             for c, v in blocks(n_first, e_first, dense_l).items()}
    last = {c: v + head.get(c, 0) for c, v in blocks(n_last, e_last, dense_l).items()}
    mid = blocks(n_mid, e_mid, dense_l)
    t = {k: sum(d.values()) for k, d in (("first", first), ("last", last), ("mid", mid))}
    t_last = np.where(one, 0.0, t["last"])
    # The slowest rank: the first if no other is slower, else the last if the middle is not,
    # else the middle (np.select's choice, element for element).
    first_slowest, last_slowest = t["first"] >= np.maximum(t_last, t["mid"]), t_last >= t["mid"]
    slow = {c: np.where(first_slowest, first[c], np.where(last_slowest, last[c], mid[c]))
            for c in dense_l}
    t_max = sum(slow.values())
    # The last micro-batch's backward through the first rank's blocks: what gradient reduction
    # hides behind (that rank finishes its backward last).
    window = (n_first - e_first) * lay["dense.bwd"] + e_first * lay[f"{moe_name}.bwd"]
    fwd_window = ((n_first - e_first) * lay["dense.fwd"]
                  + e_first * lay[f"{moe_name}.fwd"])  # the first forward, next step
    out = {**{f"max_{c}": v for c, v in slow.items()}, "t_max": t_max, "t_sum": lay["t_sum"],
           "bwd_window": window, "fwd_window": fwd_window, "pp_hop": lay["pp_hop"]}
    if "fsdp.ov_f" in lay:
        out["fsdp_overlaps"] = (lay["fsdp.ov_f"], lay["fsdp.win_f"], lay["fsdp.win_b"])
    return out


def _embedding_comm(spec: TransformerSpec, P: PlanArrays, sh: Shapes, link: Link) -> np.ndarray:
    """The vocab-parallel embedding's collective per micro-batch (Shoeybi et al. 2019, section
    3): each tp rank looks up the tokens its rows own and the partial outputs are summed, an
    all-reduce forward (identity backward), or with sequence parallelism a reduce-scatter forward
    and an all-gather backward (Korthikanti et al. 2022, section 4.2.2). Learned positions are
    summed into the same collective (executor/parallel/vocab.py; Megatron-LM adds them first)."""
    msg = sh.act_bytes * sh.mbs * spec.seq_len / sh.cp * spec.hidden_size
    sp = link.reduce_scatter(msg) + link.all_gather(msg)
    return np.where(P.tp > 1, np.where(sh.sp, sp, link.all_reduce(msg)), 0.0)


def step_breakdown(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
                   links: Mapping[str, Link]) -> dict[str, np.ndarray]:
    """Seconds per step by category; they add up to `step_time_s`. The gradient sync's and
    optimizer's collectives are computed once per distinct SYNC_FIELDS combination."""
    st = _stages(spec, cluster, P, sh, links)
    sync = on_groups(lambda p, s, ln: sync_terms(spec, cluster, p, s, ln), P, sh, links,
                     P.groups(*SYNC_FIELDS))
    m, v = P.micro_batches.astype(float), P.vpp.astype(float)
    # Each pipeline schedule (plan.pipeline_passes per step) fills and drains on its own: the
    # bubble and the fill's p2p slots once per pass.
    passes = P.passes.astype(float)
    slots = m * v + passes * (P.pp - 1)  # chunk slots on the critical path
    pp_comm = np.where(P.pp > 1, st["pp_hop"] * slots, 0.0)
    out = {
        "compute_s": m * st["max_compute"],
        "tp_comm_s": m * st["max_tp"],
        "cp_comm_s": m * st["max_cp"],
        "ep_comm_s": m * st["max_ep"],
        "host_s": m * st["max_host"],
        "pp_comm_s": pp_comm,
        "dp_comm_s": m * st["max_dp"] + dp_exposed(spec, cluster, P, sh, st["bwd_window"],
                                                    st["fwd_window"], sync,
                                                    st.get("fsdp_overlaps")),
        # Clamped: with one stage t_sum and t_max are the same sum in another order, and the
        # float difference can come out -1e-20 (tests/test_stack_properties.py found it).
        "bubble_s": passes * np.maximum(0.0, st["t_sum"] - st["t_max"]) / v,
        "optimizer_s": sync["optimizer"],
    }
    out["step_time_s"] = sum(out.values())
    return out
