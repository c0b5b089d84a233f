"""Issue 15's measurement protocol without long runs: the order plans run in over rounds, the
median and spread over rounds, the within-spread judgement, the summary figures on hand-made
rows (rank correlation, pick, machine noise), the rounds loop and validate-local itself with a
fake launch and a fake clock (batches, failures, a --max-minutes stop that writes a resumable
file, --resume continuing it to the same result, refusals), files of the older format, the HTML
error bars, calibrate's oversubscription record and the refit's within-spread figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from executor.commands.calibrate import oversubscription, record_oversubscription
from executor.rounds import budget_line, new_measurements, run_rounds
from executor.shapes import one_node
from executor.validate_local import FILE, load_stopped, validate_local
from planner.compare import MEMORY, compare_one, rank_memory, summarize
from planner.cost.evaluate import predict
from planner.hardware import Cluster
from planner.noise import (machine_noise, pick, quantile, relative_spread, round_order, spread,
                           within_spread)
from planner.plan import Plan
from planner.refit import Run, errors, runs_from
from planner.report import compare_html
from planner.schema import InputError
from planner.search.search import search
from planner.transformer import load_transformer

OLD = Path(__file__).parent / "fixtures" / "predicted_vs_measured_small.json"
SPEC = load_transformer("tiny")
CLUSTER = one_node(2)


# -- order, median, spread ------------------------------------------------------------------

def test_rounds_rotate_the_search_order():
    assert [round_order(5, 3, r) for r in range(3)] == [
        [0, 1, 2, 3, 4], [1, 2, 3, 4, 0], [3, 4, 0, 1, 2]]
    assert round_order(4, 1, 0) == [0, 1, 2, 3] and round_order(0, 3, 2) == []
    orders = [round_order(138, 3, r) for r in range(3)]
    assert all(sorted(o) == list(range(138)) for o in orders)
    assert len({o[0] for o in orders}) == 3  # no plan is always first
    with pytest.raises(ValueError, match="r=3"):
        round_order(5, 3, 3)


def test_median_spread_and_interquartile_range():
    assert quantile([3.0, 1.0, 2.0], 0.25) == pytest.approx(1.5)
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.75) == pytest.approx(3.25)
    assert spread([0.3, 0.1, 0.2]) == pytest.approx(
        {"min": 0.1, "max": 0.3, "q25": 0.15, "q75": 0.25})
    assert spread([0.2]) == {"min": 0.2, "max": 0.2, "q25": 0.2, "q75": 0.2}
    assert relative_spread([0.9, 1.0, 1.2]) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="no rounds"):
        spread([])


def test_within_spread_is_min_max_widened_by_the_tolerance():
    band = {"min": 1.0, "max": 2.0, "q25": 1.2, "q75": 1.8}
    assert within_spread(1.5, band) and within_spread(0.95, band) and within_spread(2.1, band)
    assert not within_spread(0.94, band) and not within_spread(2.11, band)
    assert not within_spread(0.95, band, tolerance=0.0)
    with pytest.raises(ValueError, match="got 1.5"):
        within_spread(1.0, band, tolerance=1.5)


# -- rows and summary ------------------------------------------------------------------------

def _pred(step: float) -> dict:
    mem = {"weights_bytes": 10, "gradients_bytes": 10, "optimizer_bytes": 20,
           "activations_bytes": 5}
    return {"step_time_s": step, "breakdown": {"compute_s": step}, "memory": mem,
            "memory_by_stage": {s: mem for s in ("first", "middle", "last")}}


MEAS_MEM = [{"rank": r, "params_bytes": 10, "grads_bytes": 10, "optimizer_bytes": 20,
             "activations_bytes": 5} for r in (0, 1)]
PLAN = Plan(dp=2, tp=1, pp=1, micro_batch_size=1, global_batch_size=2)


def _row(pred: float, rounds: list[float], rank: int) -> dict:
    med = sorted(rounds)[len(rounds) // 2]
    return compare_one(PLAN, _pred(pred), {"step_time_s": med, "memory": MEAS_MEM},
                       rounds_s=rounds, search_rank=rank)


def test_a_row_keeps_its_keys_and_adds_the_spread():
    row = _row(0.105, [0.10, 0.12, 0.09], 0)
    assert row["predicted_step_time_s"] == row["predicted"]["step_time_s"] == 0.105
    assert row["measured_step_time_s"] == row["measured"]["step_time_s"] == 0.10
    assert row["measured_rounds_s"] == [0.10, 0.12, 0.09] and row["within_spread"]
    assert row["measured_spread_s"] == pytest.approx(
        {"min": 0.09, "max": 0.12, "q25": 0.095, "q75": 0.11})
    assert row["step_error"] == pytest.approx(0.05) and row["search_rank"] == 0
    assert not _row(0.2, [0.10, 0.12, 0.09], 0)["within_spread"]
    with pytest.raises(ValueError, match="not the median"):
        compare_one(PLAN, _pred(0.1), {"step_time_s": 0.12, "memory": MEAS_MEM},
                    rounds_s=[0.10, 0.12, 0.09])


def test_summary_figures_on_synthetic_rows():
    rows = [_row(0.108, [0.110, 0.120, 0.130], 0),   # the search's first: median 0.120
            _row(0.110, [0.100, 0.115, 0.125], 1),   # the best median: 0.115, max 0.125
            _row(0.200, [0.190, 0.200, 0.210], 2),
            _row(0.500, [0.300, 0.310, 0.320], 3)]   # 61% off, outside its spread
    s = summarize(rows)
    assert s["within_15_pct"] == pytest.approx(0.75)
    assert s["within_spread_share"] == pytest.approx(0.75)  # 0.108 >= 0.110 * 0.95 too
    assert s["rank_correlation"] == pytest.approx(0.8)      # one swap among 4
    p = s["pick"]
    assert p["first_search_rank"] == 0 and p["first_measured_s"] == 0.120
    assert p["best_measured_s"] == 0.115
    assert p["first_vs_best_pct"] == pytest.approx(100 * (0.120 / 0.115 - 1))
    assert p["first_within_5_pct"] and p["first_within_best_spread"]
    # (max - min) / median per plan: 1/6, 0.025/0.115, 0.1, 0.02/0.31 -> median of the middle two
    want = sorted([0.02 / 0.12, 0.025 / 0.115, 0.02 / 0.2, 0.02 / 0.31])
    assert s["machine_noise"] == pytest.approx((want[1] + want[2]) / 2)
    assert s["machine_noise_plans"] == 4 and s["rounds_per_plan"] == {"min": 3, "max": 3}
    far = summarize([_row(0.1, [0.20, 0.21, 0.22], 0), _row(0.2, [0.10, 0.11, 0.12], 1)])
    assert far["pick"]["first_vs_best_pct"] == pytest.approx(100 * (0.21 / 0.11 - 1))
    assert not far["pick"]["first_within_5_pct"]
    assert not far["pick"]["first_within_best_spread"]
    assert far["rank_correlation"] == pytest.approx(-1.0)


def test_older_files_still_load_summarise_render_and_refit(tmp_path, capsys):
    """The fixture predates the protocol: no rounds, spreads or search ranks."""
    from planner.commands.compare import show
    data = json.loads(OLD.read_text())
    assert not any("measured_spread_s" in r for r in data["rows"])
    s = summarize(data["rows"])
    assert s["within_spread_share"] is None and s["machine_noise"] is None
    assert s["rounds_per_plan"] is None and s["pick"]["first_within_best_spread"] is None
    assert s["pick"]["first_measured_s"] == pytest.approx(
        min(data["rows"], key=lambda r: r["predicted"]["step_time_s"])["measured"]["step_time_s"])
    assert machine_noise(data["rows"]) == (None, 0) and pick(data["rows"])
    page = compare_html.write(tmp_path / "old.html", data).read_text()
    assert "Step time: predicted vs. measured" in page and "in spread" not in page
    show(data)  # the old summary, without the new keys
    assert "within 15%" in capsys.readouterr().out
    runs = runs_from(data, "old.json")
    assert len(runs) == len(data["rows"]) and all(r.spread_s is None for r in runs)
    assert "within_spread" not in errors(
        __import__("numpy").array([r.measured_s for r in runs]), runs)


# -- the loop, with a fake launch and a fake clock ---------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Fake:
    """A MeasureFn: each plan run takes `seconds` of the fake clock and measures a value fixed
    by (plan, how often it ran); `fail`: plan indices that fail."""

    def __init__(self, plans: list[Plan], clock: Clock, seconds: float = 10.0,
                 fail: tuple[int, ...] = (), counts: dict | None = None) -> None:
        self.plans, self.clock, self.seconds, self.fail = plans, clock, seconds, fail
        self.counts = defaultdict(int) if counts is None else counts
        self.launches: list[list[int]] = []
        self.pred = [predict(SPEC, CLUSTER, p) for p in plans]

    def __call__(self, indices: list[int], on_plan) -> None:
        self.launches.append(list(indices))
        for i in indices:
            self.clock.t += self.seconds
            k = self.counts[i]
            self.counts[i] += 1
            if i in self.fail:
                on_plan(i, {"error": "rank 1 failed: boom"})
                continue
            v = self.pred[i]["step_time_s"] * (1.0 + 0.05 * ((i + k) % 3))
            mem = [{"rank": r, **{m: rank_memory(self.plans[i], self.pred[i], r)[p]
                                  for p, m in MEMORY.items()}} for r in range(2)]
            on_plan(i, {"step_time_s": v, "step_times_s": [v, v], "memory": mem})

    @property
    def calls(self) -> list[int]:
        return [i for launch in self.launches for i in launch]


def _plans(n: int) -> list[Plan]:
    res = search(SPEC, CLUSTER, 8, "fp32")
    return [res.plan(i) for i in range(n)]


def test_run_rounds_interleaves_batches_and_skips_failed_plans():
    plans, clock, lines = _plans(5), Clock(), []
    fake = Fake(plans, clock, fail=(2,))
    data = {"protocol": {"rounds": 3}, "rounds_done": 0, "measurements":
            new_measurements(plans, 3), "progress": {"plan_runs": 0, "measure_seconds": 0.0,
                                                     "stopped": None}}
    assert run_rounds(data, fake, estimate_s=1.0, batch=2, clock=clock, echo=lines.append)
    assert fake.launches == [[0, 1], [2, 3], [4], [1, 3], [4, 0], [3, 4], [0, 1]]
    assert data["rounds_done"] == 3 and data["progress"]["plan_runs"] == 13
    assert data["progress"]["measure_seconds"] == pytest.approx(130.0)
    m = data["measurements"]
    assert m[2]["error"] == "rank 1 failed: boom" and m[2]["failed_round"] == 1
    assert all(None not in m[i]["rounds_s"] for i in (0, 1, 3, 4))
    assert "round 1/3 done: 5 plan runs in 0.8 min; about 1.3 min left (8 plan runs x " \
           "~10.00 s)" in lines
    assert budget_line(138, 3, 2.0, "x", 25) == (
        "budget: 138 plans x 3 rounds x ~2.00 s per plan (x) = ~13.8 min; --max-minutes 25 "
        "stops at a plan boundary")


def _run(out: Path, fake: Fake, clock: Clock, **kw) -> dict:
    return validate_local(SPEC, CLUSTER, 8, 3, 1, 1, out, len(fake.plans), lambda _: None,
                          rounds=3, measure_fn=fake, clock=clock, batch=2, **kw)


def test_a_stop_writes_a_resumable_file_and_resume_gives_the_uninterrupted_result(tmp_path):
    plans = _plans(3)
    pred = [p["step_time_s"] for p in Fake(plans, Clock()).pred]
    whole = _run(tmp_path / "whole", Fake(plans, c := Clock()), c)
    assert whole["complete"] and whole["rounds_done"] == 3
    assert whole["rows"][0]["measured_rounds_s"] == pytest.approx(
        [pred[0] * f for f in (1.0, 1.05, 1.1)])

    counts: dict = defaultdict(int)  # the fake machine's state, kept over the stop
    clock = Clock()
    first = Fake(plans, clock, counts=counts)
    stopped = _run(tmp_path / "cut", first, clock, deadline=45.0, max_minutes=0.75)
    assert first.calls == [0, 1, 2, 1]  # round 2 stops after one plan: the next won't fit
    on_disk = json.loads((tmp_path / "cut" / FILE).read_text())
    assert on_disk == json.loads(json.dumps(stopped))
    assert on_disk["complete"] is False and on_disk["rounds_done"] == 1
    assert on_disk["progress"]["stopped"]["plan_runs_left"] == 5
    assert on_disk["rows"][1]["measured_rounds_s"] == pytest.approx(
        [pred[1] * f for f in (1.05, 1.1)])
    assert (tmp_path / "cut" / "report.html").is_file()

    second = Fake(plans, clock, counts=counts)
    done = _run(tmp_path / "cut", second, clock, resume=load_stopped(tmp_path / "cut" / FILE))
    assert second.calls == [2, 0, 2, 0, 1]  # the rest of round 2, then round 3
    assert first.calls + second.calls == [0, 1, 2] + [1, 2, 0] + [2, 0, 1]
    assert done["complete"] and done["rounds_done"] == 3
    assert done["rows"] == whole["rows"] and done["summary"] == whole["summary"]
    with pytest.raises(InputError, match="is complete .3 of 3 rounds.: nothing to resume"):
        load_stopped(tmp_path / "cut" / FILE)


def test_resume_refuses_other_settings_and_other_files(tmp_path):
    plans, clock = _plans(2), Clock()
    _run(tmp_path, Fake(plans, clock), clock, deadline=15.0)
    stopped = load_stopped(tmp_path / FILE)
    with pytest.raises(InputError, match=r"other settings: --steps 3 there, 4 here"):
        validate_local(SPEC, CLUSTER, 8, 4, 1, 1, tmp_path, 2, lambda _: None, rounds=3,
                       measure_fn=Fake(plans, clock), clock=clock, resume=stopped)
    with pytest.raises(InputError, match=r"--rounds 3 there, 2 here; --limit 2 there, 1 here"):
        validate_local(SPEC, CLUSTER, 8, 3, 1, 1, tmp_path, 1, lambda _: None, rounds=2,
                       measure_fn=Fake(plans, clock), clock=clock, resume=stopped)
    old = tmp_path / "old.json"
    old.write_text(OLD.read_text())
    with pytest.raises(InputError, match="not written by validate-local --rounds"):
        load_stopped(old)
    with pytest.raises(InputError, match="does not exist"):
        load_stopped(tmp_path / "none.json")


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner.cli", "validate-local", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"})


def test_cli_max_minutes_stops_cleanly_and_resume_checks_the_settings(tmp_path):
    """A budget already spent stops before the first launch (no process starts): the file is
    written, incomplete and resumable; --resume with other --steps is one line, exit 2."""
    (tmp_path / "two.json").write_text(CLUSTER.model_dump_json())
    common = ["--profile", "two.json", "--limit", "2", "--steps", "3", "--warmup", "1",
              "--threads", "1", "--rounds", "2", "--out-dir", "out"]
    r = _cli(tmp_path, *common, "--max-minutes", "0.0001")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "budget: 2 plans x 2 rounds x" in r.stdout and "time is up" in r.stdout
    assert "0 of 2 plans ran, 0 failed, 0 of 2 rounds done" in r.stdout
    assert "--resume" in r.stdout
    d = json.loads((tmp_path / "out" / FILE).read_text())
    assert d["complete"] is False and d["rounds_done"] == 0 and d["rows"] == []
    assert d["oversubscription"] == oversubscription(2, 1)
    r = _cli(tmp_path, *[a if a != "3" else "4" for a in common], "--resume")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--steps 3 there, 4 here" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli(tmp_path, *common, "--rounds", "0")
    assert r.returncode == 2 and "--rounds must be >= 1, got 0" in r.stderr


# -- report, calibrate, refit ------------------------------------------------------------------

def test_report_shows_each_spread_as_an_error_bar(tmp_path, capsys):
    from planner.commands.compare import show
    plans, clock = _plans(3), Clock()
    data = _run(tmp_path, Fake(plans, clock), clock)
    page = (tmp_path / "report.html").read_text()
    assert "error bars: min-max over rounds" in page and "arrayminus" in page
    assert "in spread" in page and "machine noise" in page
    assert "the search's first plan" in page
    show(data)
    out = capsys.readouterr().out
    assert "machine noise:" in out and "pick: the search's first plan" in out
    assert "predicted within their measured spread over 3 round(s)" in out


def test_calibrate_records_an_oversubscribed_world(tmp_path):
    assert oversubscription(2, 1, cpus=2)["oversubscribed"] is False
    info = oversubscription(4, 1, cpus=2)
    assert info == {"oversubscribed": True, "world_size": 4, "threads_per_rank": 1,
                    "threads": 4, "cpu_count": 2}
    profile, raw = tmp_path / "cpu.json", tmp_path / "cpu.raw.json"
    profile.write_text(one_node(4).model_dump_json())
    raw.write_text("{}")
    record_oversubscription(profile, raw, info)
    record_oversubscription(profile, raw, info)  # once only
    notes = Cluster.model_validate_json(profile.read_text()).notes
    assert [n for n in notes if n.startswith("oversubscribed: true (4 ranks x 1 thread(s) per "
                                            "rank = 4 threads on 2 CPU cores)")] != []
    assert sum(n.startswith("oversubscribed") for n in notes) == 1
    assert json.loads(raw.read_text())["oversubscription"] == info


def test_refit_reads_the_median_and_reports_within_spread(tmp_path):
    plans, clock = _plans(3), Clock()
    data = _run(tmp_path, Fake(plans, clock), clock)
    runs = runs_from(json.loads((tmp_path / FILE).read_text()), "pvm.json")
    assert [r.measured_s for r in runs] == [r["measured_step_time_s"] for r in data["rows"]]
    assert all(r.spread_s == (row["measured_spread_s"]["min"], row["measured_spread_s"]["max"])
               for r, row in zip(runs, data["rows"]))
    import numpy as np
    e = errors(np.array([r.spread_s[1] * 1.04 for r in runs[:2]] + [runs[2].spread_s[1] * 1.2]),
               runs)
    assert e["within_spread"] == pytest.approx(2 / 3) and e["spread_runs"] == 3
    assert errors(np.array([1.0]), [Run(SPEC, plans[0], 1.0, "m")]).keys() == {
        "mean_abs_pct", "max_abs_pct", "mean_signed_pct", "within_15"}
