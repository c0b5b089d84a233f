"""Bytes per element of the weights the step computes with and of the gradients it reduces.

Kept in one place because the same widths size the memory at rest, the gradient buffers, the
data-parallel collectives and the optimizer's traffic, and they must agree.
"""

from __future__ import annotations

import numpy as np

from planner.hardware import PRECISIONS
from planner.plan_arrays import PlanArrays
from planner.stack import Stack

_FP32, _FP8 = PRECISIONS.index("fp32"), PRECISIONS.index("fp8")
_FP32_GRADS = (PRECISIONS.index("bf16"), _FP8)


def weight_bytes(P: PlanArrays) -> np.ndarray:
    """The 16-bit (or fp32) weights gathered and used by the GEMMs; fp8 plans keep bf16
    weights and cast per GEMM (planner/cost/compute.py)."""
    return np.where(P.precision == _FP32, 4.0, 2.0)


def gathered_block_bytes(P: PlanArrays, stack: Stack) -> np.ndarray:
    """A block's weights as FSDP gathers them: in fp8 (1 byte) for fp8 plans where the stack
    casts before the all-gather (stack.fp8_weight_gather), else at the weights' width."""
    fp8 = stack.fp8_weight_gather & (P.precision == _FP8)
    return np.where(fp8, 1.0, weight_bytes(P))


def grad_bytes(P: PlanArrays, stack: Stack) -> np.ndarray:
    """Gradient elements as accumulated and reduced: fp32 where the stack reduces bf16 / fp8
    plans' gradients in fp32 (stack.grad_reduce_fp32), else the weights' width. fp16 plans
    keep fp16 gradients (Megatron-LM forces fp32 for --bf16 only)."""
    fp32 = (P.precision == _FP32) | (stack.grad_reduce_fp32 & np.isin(P.precision, _FP32_GRADS))
    return np.where(fp32, 4.0, 2.0)


# Bytes per parameter at rest (weights, gradients, optimizer) of 16-bit plans by
# stack.optimizer_state; fp32_master, not listed: the weights' and the gradients' widths with
# 12 bytes of fp32 master and moments.
_RESIDENT = {"fp32_params": (4.0, 4.0, 8.0), "bf16_params": (2.0, 2.0, 4.0)}


def state_bytes(P: PlanArrays, stack: Stack) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weight, gradient, optimizer) bytes per parameter at rest, before any ZeRO sharding:
    stack.optimizer_state for 16-bit plans, 4 + 4 + 8 for fp32 plans."""
    fp32 = P.precision == _FP32
    w, g = weight_bytes(P), grad_bytes(P, stack)
    o = np.where(fp32, 8.0, 12.0)
    if stack.optimizer_state in _RESIDENT:
        rw, rg, ro = _RESIDENT[stack.optimizer_state]
        w, g, o = (np.where(fp32, a, b) for a, b in ((w, rw), (g, rg), (o, ro)))
    return w, g, o


def optimizer_traffic_bytes(P: PlanArrays, stack: Stack) -> np.ndarray:
    """HBM bytes the Adam update moves per parameter: the weight it updates (the fp32 master,
    or the resident parameter) and both moments read and written, the gradient read twice (the
    clipping norm, the update) at its width at rest, and, with an fp32 master beside 16-bit
    weights, the 16-bit copy written."""
    w, g, o = state_bytes(P, stack)
    master = (P.precision != _FP32) & (stack.optimizer_state == "fp32_master")
    updated = np.where(master, 4.0, w)        # the weight Adam writes
    moments = np.where(master, o - 4.0, o)
    return 2 * (updated + moments) + 2 * g + np.where(master, w, 0.0)
