"""The measurement protocol's loop (issue 15): every plan measured in R rounds, round-robin,
each round its own launches, stopping cleanly at a plan boundary when the time is up.

Torch-free and process-free: the launch is injected as a MeasureFn (executor.validate_local
passes one over executor.local.run_plans; the tests pass a fake), and so is the clock. The state
is the `measurements` list of a predicted_vs_measured.json, one entry per plan in search order:

    {"plan": {...}, "rounds_s": [value or null per round], "step_times_s": [[...] or null per
     round], "memory": [...] or null, "error": null or "...", "failed_round": null or r}

with the file's `rounds_done` (rounds finished by every plan that has not failed) and
`progress` {"plan_runs", "measure_seconds", "stopped"}: so a stopped run resumes where it
stopped, and its time per plan is known before the resumed one starts."""

from __future__ import annotations

import math
import time
from typing import Callable

from planner.noise import round_order
from planner.plan import Plan

OnPlan = Callable[[int, dict], None]
MeasureFn = Callable[[list[int], OnPlan], None]
"""measure(indices, on_plan): run the plans with these indices (one launch; a failing plan
must not stop the others) and call on_plan(index, result) as each lands, result being
{"step_time_s", "step_times_s", "memory"} (the timed steps' median, the timed steps, per-rank
memory) or {"error": "..."}."""


def new_measurements(plans: list[Plan], rounds: int) -> list[dict]:
    """An empty measurement state for `plans` (search order) over `rounds` rounds."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    return [{"plan": p.to_json_dict(), "rounds_s": [None] * rounds,
             "step_times_s": [None] * rounds, "memory": None, "error": None,
             "failed_round": None} for p in plans]


def pending(m: dict, r: int) -> bool:
    """Whether plan entry `m` still has to run in round `r` (0-based): not failed, not run."""
    return m["error"] is None and m["rounds_s"][r] is None


def runs_left(measurements: list[dict], rounds_done: int) -> int:
    """Plan runs still to do from round `rounds_done` on (failed plans run no more)."""
    rounds = len(measurements[0]["rounds_s"]) if measurements else 0
    return sum(pending(m, r) for m in measurements for r in range(rounds_done, rounds))


def seconds_per_plan(progress: dict, fallback_s: float) -> float:
    """Wall seconds per plan run so far (launches included), or `fallback_s` before any."""
    if progress["plan_runs"]:
        return progress["measure_seconds"] / progress["plan_runs"]
    return fallback_s


def budget_line(plans: int, rounds: int, per_plan_s: float, source: str,
                max_minutes: float | None) -> str:
    """The budget printed before the rounds start."""
    total = plans * rounds * per_plan_s
    line = (f"budget: {plans} plans x {rounds} rounds x ~{per_plan_s:.2f} s per plan ({source}) "
            f"= ~{total / 60:.1f} min")
    if max_minutes is not None:
        line += f"; --max-minutes {max_minutes:g} stops at a plan boundary"
    return line


def _record(m: dict, r: int, result: dict) -> None:
    if "error" in result:
        m["error"], m["failed_round"] = result["error"], r + 1
    else:
        m["rounds_s"][r] = result["step_time_s"]
        m["step_times_s"][r] = result["step_times_s"]
        if m["memory"] is None:
            m["memory"] = result["memory"]


def run_rounds(data: dict, measure: MeasureFn, *, estimate_s: float, batch: int = 16,
               deadline: float | None = None, clock: Callable[[], float] = time.monotonic,
               echo: Callable[[str], None] = print,
               on_change: Callable[[int | None], None] | None = None) -> bool:
    """Run the rounds `data` still lacks (data["protocol"]["rounds"], from data["rounds_done"]):
    round r runs the pending plans in planner.noise.round_order, in launches of at most `batch`
    plans. Each result is recorded in data["measurements"], then `on_change(index)` is called
    (to rebuild that plan's row and save); `on_change(None)` after each round. Before each
    launch, when a `deadline` (a `clock()` time) is set, only as many plans are launched as fit
    before it at the seconds per plan measured so far (`estimate_s` before any); when none
    fits, data["progress"]["stopped"] says where and False is returned. True when every round
    is done."""
    ms, progress = data["measurements"], data["progress"]
    rounds, n = data["protocol"]["rounds"], len(data["measurements"])
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    for r in range(data["rounds_done"], rounds):
        todo = [i for i in round_order(n, rounds, r) if pending(ms[i], r)]
        total, done, started = len(todo), 0, clock()
        while todo:
            per_plan = seconds_per_plan(progress, estimate_s)
            take = min(batch, len(todo))
            if deadline is not None and per_plan > 0:
                take = min(take, max(0, math.floor((deadline - clock()) / per_plan)))
            if take == 0:
                left = runs_left(ms, r)
                progress["stopped"] = {"round": r + 1, "plan_runs_left": left,
                                       "seconds_per_plan": per_plan}
                echo(f"time is up: stopping before plan run {done + 1}/{total} of round "
                     f"{r + 1}/{rounds} ({left} plan runs left, ~{per_plan:.2f} s each); "
                     "continue with --resume")
                return False
            chunk, todo = todo[:take], todo[take:]
            last = clock()

            def got(i: int, result: dict) -> None:
                nonlocal last, done
                now = clock()
                progress["measure_seconds"] += now - last
                progress["plan_runs"] += 1
                last, done = now, done + 1
                _record(ms[i], r, result)
                if on_change:
                    on_change(i)
                what = f"failed: {result['error']}" if "error" in result else "measured"
                echo(f"  plan {i + 1}/{n} {what} (round {r + 1}/{rounds}, {done}/{total})")
            measure(chunk, got)
            progress["measure_seconds"] += clock() - last  # the launch's tail
            for i in chunk:  # a launch that lost a plan without a word: a failure, not a hang
                if pending(ms[i], r):
                    got(i, {"error": f"no result from the launch in round {r + 1}"})
        data["rounds_done"] = r + 1
        left = runs_left(ms, r + 1)
        per_plan = seconds_per_plan(progress, estimate_s)
        echo(f"round {r + 1}/{rounds} done: {total} plan runs in {(clock() - started) / 60:.1f} "
             f"min; about {left * per_plan / 60:.1f} min left ({left} plan runs x "
             f"~{per_plan:.2f} s)")
        if on_change:
            on_change(None)
    progress["stopped"] = None
    return True
