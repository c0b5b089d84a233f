"""The load imbalance of dropless (auxiliary-loss) routing, read off a published pair of runs
that differ only in forced balancing: Megatron-MoE-ModelZoo's Qwen3-235B long-context table on
256 H100 (yanring/Megatron-MoE-ModelZoo best_practice/qwen3/readme.md @e8650517, 'Long Context':
TP4 EP8 PP8 VPP4, DeepEP, bf16; TFLOP/s 'forced balance / dropless' per sequence length; launch
commands in best_practice/qwen3/run_235b.sh, whose note says `--moe-router-force-load-balancing`
is what tells the two apart). For each length, the `moe.load_imbalance` under which this model's
step time grows by the measured forced / dropless ratio (bisection). Prints figures; asserts
nothing. The 16k row's factor is what planner/validation/spec_map.json gives the shipped 4k row
of the same layout whose launch command does not force balance.

    python benchmarks/dropless_imbalance.py
"""

from __future__ import annotations

from planner.cost.evaluate import predict
from planner.hardware import load_cluster
from planner.plan import Plan
from planner.transformer import load_transformer

# (sequence length, cp, forced TFLOP/s, dropless TFLOP/s): the table's four rows, GBS 256.
ROWS = [(16384, 1, 295, 237), (32768, 2, 335, 277), (65536, 4, 368, 320), (131072, 8, 389, 357)]


def step(seq: int, cp: int, imbalance: float) -> float:
    """Predicted step time of the table's layout at `seq` tokens with this imbalance. The
    launch commands recompute layernorm and moe ('--recompute-modules layernorm moe'), planned
    as selective recompute, the nearest the plan can say."""
    spec = load_transformer("qwen3-235b-a22b")
    spec = spec.model_copy(update={"seq_len": seq, "moe": spec.moe.model_copy(
        update={"load_imbalance": imbalance})})
    plan = Plan(dp=8 // cp, tp=4, pp=8, cp=cp, ep=8, micro_batch_size=1, global_batch_size=256,
                virtual_pipeline_stages=4, schedule="interleaved_1f1b", zero_stage=1,
                recompute="selective", sequence_parallel=True)
    return predict(spec, load_cluster("dgx_h100", 32, "megatron-core-deepep"), plan)["step_time_s"]


def implied(seq: int, cp: int, ratio: float) -> float:
    """The imbalance whose step time is `ratio` times the balanced one."""
    base, lo, hi = step(seq, cp, 1.0), 1.0, 8.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if step(seq, cp, mid) / base < ratio else (lo, mid)
    return (lo + hi) / 2


def main() -> None:
    print("Qwen3-235B, 256 H100, TP4 EP8 PP8 VPP4 (ModelZoo long-context table)")
    print(f"{'seq':>7} {'cp':>3} {'forced':>7} {'dropless':>9} {'ratio':>6} {'implied imbalance':>18}")
    for seq, cp, forced, dropless in ROWS:
        ratio = forced / dropless
        print(f"{seq:>7} {cp:>3} {forced:>7} {dropless:>9} {ratio:>6.3f} "
              f"{implied(seq, cp, ratio):>18.2f}")


if __name__ == "__main__":
    main()
