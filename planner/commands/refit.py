"""`paraplan calibrate --from-runs`: refit a profile to measured runs (planner/refit.py) and
print what moved and the step-time error before, after and on runs left out of the fit."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from planner.commands.common import console
from planner.hardware import load_cluster
from planner.refit import refit, runs_from
from planner.schema import InputError, read_json, write_json_atomic


def _profile(ref: str | None, loaded: dict[str, object]) -> dict:
    if ref:
        return load_cluster(ref).model_dump()
    for path, data in loaded.items():
        if isinstance(data, dict) and isinstance(data.get("profile"), dict):
            return data["profile"]
    raise InputError("--from-runs needs --profile (the profile the runs are predicted on): "
                     "none of the run files carries one (validate-local's does)")


def refit_command(files: list[str], profile_ref: str | None, out: str, folds: int) -> int:
    if folds < 0 or folds == 1:
        raise InputError(f"--folds must be 0 (no cross-validation) or >= 2, got {folds}")
    loaded = {f: read_json(Path(f), f"run file {f}") for f in files}
    runs = [r for f, d in loaded.items() for r in runs_from(d, f)]
    profile = _profile(profile_ref, loaded)
    con = console()
    con.print(f"refitting profile {profile['name']} to {len(runs)} measured runs"
              + (f" ({folds}-fold cross-validation)" if folds else "") + " ...")
    fitted, report = refit(profile, runs, folds)
    t = Table(title="fields the runs exercise", title_justify="left")
    for col in ("field", "before", "after"):
        t.add_column(col, justify="left" if col == "field" else "right")
    for path, v in report["fields"].items():
        t.add_row(path, f"{v['before']:.4g}", f"{v['after']:.4g}")
    con.print(t)
    e = Table(title="step-time error (predicted / measured - 1)", title_justify="left")
    for col in ("profile", "mean |error|", "max |error|", "mean signed", "within 15%"):
        e.add_column(col, justify="left" if col == "profile" else "right")
    rows = [("before", report["before"]), ("refitted, same runs", report["after"])]
    if "cross_validated" in report:
        rows.append((f"refitted, runs left out ({report['folds']}-fold)",
                     report["cross_validated"]))
    for name, s in rows:
        e.add_row(name, f"{s['mean_abs_pct']:.1f}%", f"{s['max_abs_pct']:.1f}%",
                  f"{s['mean_signed_pct']:+.1f}%", f"{100 * s['within_15']:.0f}%")
    con.print(e)
    write_json_atomic(out, fitted)
    write_json_atomic(Path(out).with_name(Path(out).stem + ".refit.json"), report)
    con.print(f"refitted profile written to [bold]{out}[/] (report beside it: "
              f"{Path(out).stem}.refit.json)")
    return 0
