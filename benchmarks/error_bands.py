"""Write planner/validation/error_bands.json from the leave-one-source-out residuals of the
shipped fit sets (published + current; held_out is never fitted on), and print the bands.

Run: python benchmarks/error_bands.py [--out F]      (about half a minute on 2 cores)
Rerun after any change to the cost model, the profiles or the stacks: the bands are the
residuals of the tree they were computed on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from planner.uncertainty import bands_path
from planner.validation import FIT_SETS, shipped_set_path
from planner.validation.bands import bands_document
from planner.validation.cv import shipped_cv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(bands_path()), help="where to write (default: packaged)")
    args = ap.parse_args()
    cv = shipped_cv()
    files = [f"planner/validation/{shipped_set_path(n).name}" for n in FIT_SETS]
    doc = bands_document(cv, files)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    o = cv.overall()
    print(f"{o['count']} runs, leave-one-source-out: mean abs {o['mape_pct']:.1f}%, max "
          f"{o['max_abs_error_pct']:.1f}%, mean signed {o['mean_error_pct']:+.1f}%")
    for f in cv.folds:
        print(f"  without {f.source:55s} fraction {f.fraction:.3f}")
    print(f"{'group':20s} {'runs':>5s} {'p10':>7s} {'p90':>7s}  from")
    for key, e in doc["groups"].items():
        print(f"{key:20s} {e['runs']:5d} {e['low_error_pct']:+6.1f}% {e['high_error_pct']:+6.1f}%"
              f"  {e['group']}{'  (unvalidated)' if e['unvalidated'] else ''}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
