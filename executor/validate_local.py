"""Local validation: rank every valid plan of a small model for this machine with the planner,
run each with the executor in R rounds (executor/rounds.py: round-robin, each round its own
forked gloo launches of at most 16 plans), and compare each prediction with the median over
rounds and its spread (planner/compare.py, planner/noise.py).

predicted_vs_measured.json is rewritten (atomically) as each plan run lands, with every round's
measurements (`measurements`, `rounds_done`, `progress`), so an interrupted or time-limited run
keeps what it measured and `--resume` continues it; a plan that fails is listed with its error
under `failed`, kept out of the rows and the statistics, runs no more rounds, and the others
run on."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable

from executor.rounds import MeasureFn, budget_line, new_measurements, run_rounds, \
    seconds_per_plan
from planner.compare import compare_one, summarize
from planner.cost.evaluate import predict
from planner.hardware import Cluster
from planner.noise import DEFAULT_TOLERANCE
from planner.plan import Plan
from planner.report import compare_html
from planner.schema import InputError, read_json, write_json_atomic
from planner.search.search import search
from planner.transformer import TransformerSpec

FILE = "predicted_vs_measured.json"
# settings a resumed run must share with the stopped one: (where in the file, key, flag)
SETTINGS = [(None, "transformer", "--transformer"), (None, "world_size", "--world-size"),
            (None, "global_batch_size", "--global-batch-size"),
            (None, "threads_per_rank", "--threads"), (None, "profile", "--profile"),
            ("protocol", "rounds", "--rounds"), ("protocol", "order", "order"),
            ("protocol", "steps", "--steps"), ("protocol", "warmup", "--warmup"),
            ("protocol", "timeout_s", "--timeout"), ("protocol", "limit", "--limit")]


def measured(result: dict, warmup: int) -> dict:
    """A run_plans result as a measurement row (the timed steps' median), or its error."""
    if "error" in result:
        return {"error": result["error"]}
    timed = result["step_times_s"][warmup:]
    return {"step_time_s": statistics.median(timed), "step_times_s": timed,
            "memory": [{"rank": k, **m} for k, m in enumerate(result["memory"])]}


def launcher(spec: TransformerSpec, plans: list[Plan], world: int, steps: int, warmup: int,
             threads: int, timeout_s: int) -> MeasureFn:
    """The real MeasureFn: one executor.local.run_plans launch (a fresh forked gloo world; a
    new one after a failing plan) over the plans with the given indices, keyed by index."""
    from executor.local import run_plans  # torch: imported only when plans really run
    from executor.train import TrainConfig
    cfg = TrainConfig(steps=steps, warmup=warmup)

    def measure(indices: list[int], on_plan: Callable[[int, dict], None]) -> None:
        jobs = [(str(i), spec, plans[i]) for i in indices]
        run_plans(world, jobs, cfg, threads=threads, timeout_s=timeout_s, keep_going=True,
                  on_result=lambda key, res: on_plan(int(key), measured(res, warmup)))
    return measure


def _norm(value: object) -> object:
    return json.loads(json.dumps(value))


def load_stopped(path: Path) -> dict:
    """A stopped validate-local run to resume (InputError, one line, for anything else)."""
    if not path.is_file():
        raise InputError(f"--resume: {path} does not exist (nothing to resume; run without "
                         "--resume first)")
    data = read_json(path, f"--resume input {path}")
    if not isinstance(data, dict) or not {"protocol", "measurements", "rounds_done"} <= set(data):
        raise InputError(f"--resume: {path} was not written by validate-local --rounds (no "
                         "'protocol', 'measurements' and 'rounds_done'): start over without "
                         "--resume")
    if data.get("complete"):
        raise InputError(f"--resume: {path} is complete ({data['rounds_done']} of "
                         f"{data['protocol']['rounds']} rounds): nothing to resume")
    return data


def check_same(stored: dict, fresh: dict, path: Path) -> None:
    """InputError (one line) naming every setting in which `fresh` differs from `stored`."""
    diffs = []
    for where, key, flag in SETTINGS:
        a = (stored.get(where) or {}).get(key) if where else stored.get(key)
        b = fresh[where][key] if where else fresh[key]
        if _norm(a) != _norm(b):
            show = {"transformer": lambda v: (v or {}).get("name"),
                    "profile": lambda v: f"{(v or {}).get('name')} (values differ)"}.get(
                        key, lambda v: v)
            diffs.append(f"{flag} {show(a)} there, {show(b)} here")
    if not diffs:
        plans = [m["plan"] for m in stored["measurements"]]
        if _norm(plans) != _norm([m["plan"] for m in fresh["measurements"]]):
            diffs.append(f"the search gives other plans ({len(fresh['measurements'])} here, "
                         f"{len(plans)} there)")
    if diffs:
        raise InputError(f"--resume: {path} was measured with other settings: "
                         f"{'; '.join(diffs)} (rerun with the same settings, or start over "
                         "without --resume)")


def new_run(spec: TransformerSpec, cluster: Cluster, global_batch: int, plans: list[Plan],
            steps: int, warmup: int, threads: int, timeout_s: int, rounds: int,
            limit: int | None, tolerance: float) -> dict:
    """The predicted_vs_measured.json of a run about to start."""
    return {"transformer": spec.model_dump(), "cluster": cluster.name,
            "world_size": cluster.num_gpus, "global_batch_size": global_batch,
            "threads_per_rank": threads, "profile": cluster.model_dump(),
            "plans_total": len(plans), "complete": False, "rounds_done": 0,
            "protocol": {"rounds": rounds, "order": "rotated", "steps": steps,
                         "warmup": warmup, "timeout_s": timeout_s, "limit": limit,
                         "spread_tolerance": tolerance},
            "progress": {"plan_runs": 0, "measure_seconds": 0.0, "stopped": None},
            "measurements": new_measurements(plans, rounds),
            "rows": [], "failed": [], "summary": None}


def row_of(plan: Plan, prediction: dict, m: dict, index: int, tolerance: float) -> dict | None:
    """A plan's comparison row from its measurement entry: None while it has no round (or
    failed)."""
    done = [(v, t) for v, t in zip(m["rounds_s"], m["step_times_s"]) if v is not None]
    if m["error"] is not None or not done:
        return None
    values = [v for v, _ in done]
    meas = {"step_time_s": statistics.median(values),
            "step_times_s": [s for _, t in done for s in t], "memory": m["memory"]}
    return compare_one(plan, prediction, meas, rounds_s=values, tolerance=tolerance,
                       search_rank=index)


def validate_local(spec: TransformerSpec, cluster: Cluster, global_batch: int, steps: int,
                   warmup: int, threads: int, out_dir: Path, limit: int | None,
                   echo: Callable[[str], None], timeout_s: int = 120, *, rounds: int = 3,
                   tolerance: float = DEFAULT_TOLERANCE, deadline: float | None = None,
                   max_minutes: float | None = None, resume: dict | None = None,
                   measure_fn: MeasureFn | None = None,
                   clock: Callable[[], float] = time.monotonic, batch: int = 16,
                   extra: dict | None = None) -> dict:
    """Search, run every plan in `rounds` rounds, compare; writes predicted_vs_measured.json
    as plan runs land and report.html at the end (when any plan ran) in out_dir. `deadline`:
    the `clock()` time to stop by, at a plan boundary (`max_minutes` only names it in the
    budget line); `resume`: a stopped run's file (load_stopped) to continue, refused when its
    settings or plans differ; `measure_fn`: the launch (default `launcher`, real processes);
    `extra`: keys added to the file (the oversubscription record)."""
    res = search(spec, cluster, global_batch, "fp32")
    if not res.fitting:
        raise InputError(f"no valid plan for {spec.name} on {cluster.num_gpus} ranks with "
                         f"global batch {global_batch}")
    plans = [res.plan(i) for i in range(res.fitting)]
    if limit:
        plans = plans[:limit]
    path = out_dir / FILE
    data = new_run(spec, cluster, global_batch, plans, steps, warmup, threads, timeout_s,
                   rounds, limit, tolerance)
    if resume is not None:
        check_same(resume, data, path)
        for key in ("measurements", "rounds_done", "progress"):
            data[key] = resume[key]
    data.update(extra or {})
    predictions = [predict(spec, cluster, p) for p in plans]
    rows: dict[int, dict] = {}

    def rebuild(i: int) -> None:
        row = row_of(plans[i], predictions[i], data["measurements"][i], i, tolerance)
        if row is None:
            rows.pop(i, None)
        else:
            rows[i] = row

    def refresh(i: int | None) -> None:  # after plan i landed (None: a round ended): save
        if i is not None:
            rebuild(i)
        data["rows"] = [rows[k] for k in sorted(rows)]
        data["failed"] = [{"plan": m["plan"], "error": m["error"], "round": m["failed_round"]}
                          for m in data["measurements"] if m["error"] is not None]
        data["summary"] = summarize(data["rows"], tolerance) if data["rows"] else None
        write_json_atomic(path, data)
    for i in range(len(plans)):
        rebuild(i)
    refresh(None)
    estimate = steps * statistics.fmean(p["step_time_s"] for p in predictions)
    per_plan = seconds_per_plan(data["progress"], estimate)
    source = ("measured so far" if data["progress"]["plan_runs"] else
              f"{steps} steps x the mean predicted step time; launches come on top")
    echo(f"{len(plans)} valid plans for {spec.name} on {cluster.num_gpus} ranks (global batch "
         f"{global_batch}); {rounds} rounds, each plan {steps} steps ({warmup} untimed)"
         + (f", resuming after {data['rounds_done']} rounds done and "
            f"{data['progress']['plan_runs']} plan runs" if resume is not None else ""))
    echo(budget_line(len(plans), rounds, per_plan, source, max_minutes))
    measure = measure_fn or launcher(spec, plans, cluster.num_gpus, steps, warmup, threads,
                                     timeout_s)
    data["complete"] = run_rounds(data, measure, estimate_s=estimate, batch=batch,
                                  deadline=deadline, clock=clock, echo=echo, on_change=refresh)
    refresh(None)
    if data["rows"]:
        compare_html.write(out_dir / "report.html", data)
    return data
