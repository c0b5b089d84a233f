"""Measured vs. predicted checkpoint stall of `paraplan run --save-every` on this machine (issue
16's target: within 30% for the tiny model). Each round: calibrate's storage measurements (write
bandwidth; the fixed and per-tensor cost of a save on the probe model), then a 2-rank dp run of
the tiny model saving every step; the prediction is fixed + tensors x per-tensor + bytes /
bandwidth. Prints every round and the median ratio; asserts nothing.

    python benchmarks/checkpoint_stall.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from executor.calibrate import measure_checkpoint_saves, measure_write_bandwidth
from planner.calibration import checkpoint_costs
from planner.measurement import Measurement

PLAN = {"dp": 2, "tp": 1, "pp": 1, "micro_batch_size": 2, "global_batch_size": 4,
        "precision": "fp32"}


def one_round(work: Path) -> tuple[float, float]:
    """(measured median stall, predicted stall) in seconds."""
    run = subprocess.run([sys.executable, "-m", "planner.cli", "run", "--plan", json.dumps(PLAN),
                          "--steps", "11", "--warmup", "1", "--save-every", "1",
                          "--checkpoint-dir", "ck", "--out", "m.json"], cwd=work,
                         capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise SystemExit(run.stdout + run.stderr)
    m = Measurement.model_validate_json((work / "m.json").read_text())
    write = measure_write_bandwidth(work)
    fixed, per_tensor = checkpoint_costs(write, measure_checkpoint_saves(2, work))
    predicted = (fixed + per_tensor * m.checkpoint_tensors
                 + m.checkpoint_bytes / (write["write_GBps"] * 1e9))
    return statistics.median(m.checkpoint_stall_s), predicted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    ratios = []
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="paraplan-ckpt-") as d:
            measured, predicted = one_round(Path(d))
        ratios.append(predicted / measured)
        print(f"round {i + 1}: measured {measured * 1e3:.1f} ms, predicted {predicted * 1e3:.1f} "
              f"ms ({100 * (ratios[-1] - 1):+.0f}%)")
    within = sum(abs(r - 1) <= 0.30 for r in ratios)
    print(f"median error {100 * (statistics.median(ratios) - 1):+.0f}%; {within} of "
          f"{len(ratios)} rounds within 30%")


if __name__ == "__main__":
    main()
