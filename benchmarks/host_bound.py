"""Where the CPU's kernel launches set the pace (planner/cost/host.py): the host share of the
step for small and mid-size models on one node, by GPU, stack, tensor parallelism and tokens per
micro-batch. Prints a table; nothing is asserted.

    python benchmarks/host_bound.py

Each row is one plan: dp = 8 / tp (one node of 8 GPUs), pp 1, micro-batch 1 of `seq` tokens,
global batch 8 micro-batches per replica, bf16, no recompute. `host` is the breakdown's host_s
over the step: the time the GPU waits for the CPU beyond its own work.
"""

from __future__ import annotations

from planner.cost.evaluate import predict
from planner.hardware import load_cluster
from planner.plan import Plan
from planner.transformer import load_transformer

MODELS = ("gpt3-1.3b", "llama3-8b")
CLUSTERS = ("dgx_h100", "dgx_b200", "gb200_nvl72")
STACKS = ("megatron-core", "torchtitan", "torchtitan-compile")


def row(model: str, cluster: str, stack: str, tp: int, seq: int) -> tuple[float, float]:
    """(step seconds, host share) of the plan described in the module docstring."""
    spec = load_transformer(model).model_copy(update={"seq_len": seq})
    c = load_cluster(cluster, 1, stack)
    dp = c.gpus_per_node // tp
    plan = Plan(dp=dp, tp=tp, pp=1, micro_batch_size=1, global_batch_size=8 * dp,
                precision="bf16", sequence_parallel=tp > 1)
    r = predict(spec, c, plan)
    return r["step_time_s"], r["breakdown"]["host_s"] / r["step_time_s"]


def main() -> None:
    print(f"{'model':10s} {'cluster':12s} {'stack':19s} {'tp':>3s} {'seq':>5s} "
          f"{'step':>9s} {'host':>6s}")
    for model in MODELS:
        for cluster in CLUSTERS:
            for stack in STACKS:
                for tp in (1, 8):
                    for seq in (1024, 4096):
                        step, share = row(model, cluster, stack, tp, seq)
                        print(f"{model:10s} {cluster:12s} {stack:19s} {tp:3d} {seq:5d} "
                              f"{step * 1e3:7.1f}ms {share * 100:5.1f}%")


if __name__ == "__main__":
    main()
