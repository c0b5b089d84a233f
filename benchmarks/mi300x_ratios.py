"""MI300X against NVIDIA on the same scripts (../shared/validation/mi300x_partial.json, README
section "AMD MI300X: partial evidence only"): the model's MI300X : NVIDIA throughput ratio for the
three same-script comparisons, against the measured ratio, and the leave-one-out check of the one
number fitted to them (`gemm_sustained_fraction` of the MI300X profile: the share of its MAMF
GEMM rate ROCm's stack sustains in training). Prints figures; asserts nothing.

    python benchmarks/mi300x_ratios.py [--fraction F]
"""

from __future__ import annotations

import argparse
import math

from planner.cost.evaluate import predict
from planner.hardware import Cluster, load_cluster
from planner.plan import Plan
from planner.transformer import TransformerSpec, load_transformer

# (case, spec, plan, NVIDIA cluster, stack, measured MI300X / NVIDIA, source). Sequence length
# 4096 where the source leaves it null (the SemiAnalysis scripts' default, as docs/accuracy.md).
GPT2_XL = TransformerSpec(name="gpt2-xl", num_layers=48, hidden_size=1600, num_attention_heads=25,
                          num_kv_heads=25, ffn_hidden_size=6400, vocab_size=50257, seq_len=1024,
                          mlp="gelu", tied_embeddings=True)
PROXY_70B = load_transformer("llama3-70b").model_copy(update={"num_layers": 4, "seq_len": 4096,
                                                              "name": "llama3-70b-4layer"})
L8B = load_transformer("llama3-8b").model_copy(update={"seq_len": 4096})
CASES = [
    ("GPT-2 XL, 1 GPU, bf16", GPT2_XL, dict(dp=1, micro_batch_size=8, global_batch_size=8,
                                            precision="bf16"), "h100", "torchtitan",
     215.79 / 478.73, "ROCm/TransformerEngine issue #72"),
    ("Llama-3 8B, 8 GPUs FSDP, bf16", L8B, dict(dp=8, micro_batch_size=2, global_batch_size=16,
                                                 zero_stage=3, precision="bf16"), "h200", "fsdp",
     1 / 1.36, "alpharomercoma/MI300X-vs-H200 REPORT.md (H200 1.32-1.40x)"),
    ("Llama-3 70B 4-layer proxy, 8 GPUs FSDP, fp8", PROXY_70B,
     dict(dp=8, micro_batch_size=2, global_batch_size=16, zero_stage=3, precision="fp8"), "h100",
     "fsdp", 0.77, "ROCm/TransformerEngine issue #78 (717-747 vs 951.6 TFLOP/s)"),
]
NVIDIA = {"h100": "dgx_h100", "h200": "hgx_h200"}


def _one_node(name: str, gpus: int, stack: str) -> Cluster:
    c = load_cluster(name, 1, stack)
    return c.model_copy(update={"gpus_per_node": gpus}) if gpus < c.gpus_per_node else c


def _with_fraction(c: Cluster, f: float | None) -> Cluster:
    if f is None:
        return c
    return c.model_copy(update={"gpu": c.gpu.model_copy(update={"gemm_sustained_fraction": f})})


def model_ratios(fraction: float | None = None) -> list[float]:
    """Model MI300X : NVIDIA tokens/s per GPU for every case."""
    out = []
    for _, spec, kw, nv, stack, _, _ in CASES:
        plan = Plan(tp=1, pp=1, **kw)
        amd = _with_fraction(_one_node("mi300x_8", plan.dp, stack), fraction)
        ref = _one_node(NVIDIA[nv], plan.dp, stack)
        out.append(predict(spec, ref, plan)["step_time_s"] / predict(spec, amd, plan)["step_time_s"])
    return out


def fit(cases: list[int], base: float) -> float:
    """The fraction whose geometric-mean model ratio over `cases` equals the measured one (the
    ratio grows monotonically with the fraction; bisection)."""
    want = sum(math.log(CASES[i][5]) for i in cases) / len(cases)
    lo, hi = 0.05, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        got = sum(math.log(r) for i, r in enumerate(model_ratios(mid)) if i in cases) / len(cases)
        lo, hi = (mid, hi) if got < want else (lo, mid)
    return (lo + hi) / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fraction", type=float, help="MI300X gemm_sustained_fraction to try")
    args = ap.parse_args()
    base = load_cluster("mi300x_8").gpu.gemm_sustained_fraction
    now = model_ratios(args.fraction)
    print(f"MI300X gemm_sustained_fraction: {args.fraction or base}")
    for (name, *_, measured, src), r in zip(CASES, now):
        print(f"  {name}: model {r:.2f} x NVIDIA, measured {measured:.2f} ({src})")
    every = list(range(len(CASES)))
    f_all = fit(every, base)
    print(f"fitted on all {len(CASES)}: {f_all:.3f}")
    for i in every:
        f = fit([j for j in every if j != i], base)
        r = model_ratios(f)[i]
        print(f"  leave out {CASES[i][0]}: fit {f:.3f}, predicts {r:.2f} vs measured "
              f"{CASES[i][5]:.2f} ({100 * (r / CASES[i][5] - 1):+.0f}%)")


if __name__ == "__main__":
    main()
