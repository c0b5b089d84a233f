"""`paraplan estimate` as a user runs it: table, HTML report, deadline, prices, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GPUS = "a100_80g,h100,h200,b200,mi300x"
PROFILES = Path(__file__).resolve().parents[1] / "hardware_profiles" / "clusters"


def paraplan(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def five_gpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("est")
    r = paraplan("estimate", "-t", "llama2-7b", "--tokens", "1T", "--gpus", GPUS,
                 "--num-gpus", "64,128", "--json", "--html", "report.html", cwd=d)
    return r, d


def test_table_across_five_gpu_types_and_sizes(five_gpus):
    r, d = five_gpus
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    seen = {(o["gpu"], o["num_gpus"]) for o in out["options"]}
    assert len({g for g, _ in seen}) == 5 and {n for _, n in seen} == {64, 128}
    for o in out["options"]:
        # Independent of the code's days -> hours -> dollars chain: steps to train times the
        # predicted step time times the GPUs, and the rent read from the profile file itself.
        steps = 1e12 / (o["plan"]["global_batch_size"] * 4096)  # Llama 2: 4,096-token context
        hours = steps * o["step_time_s"] * o["num_gpus"] / 3600
        rent = json.loads((PROFILES / f"{o['cluster']}.json").read_text())["prices"][
            "rent_per_gpu_hour_usd"]
        assert o["fits"] and o["days"] == pytest.approx(steps * o["step_time_s"] / 86400)
        assert o["gpu_hours"] == pytest.approx(hours)
        assert o["rent_per_gpu_hour_usd"] == rent
        assert o["cost_usd"] == pytest.approx(hours * rent)
    assert out["cheapest"]["cost_usd"] == min(o["cost_usd"] for o in out["options"])
    assert set(out["smallest_fitting"]) == {"dgx_a100_80g", "dgx_h100", "hgx_h200", "dgx_b200",
                                           "mi300x_8"}


def test_html_report_has_both_plots(five_gpus):
    r, d = five_gpus
    page = (d / "report.html").read_text()
    assert "Cost vs. time to train" in page and "Where each option" in page
    assert "Pareto front" in page and "plotly" in page.lower() and "<table>" in page


def test_deadline_picks_the_cheapest_that_meets_it(tmp_path):
    r = paraplan("estimate", "-t", "llama2-7b", "--tokens", "20x", "--gpus", "h100,mi300x",
                 "--deadline-days", "3", "--json", "--html", "-")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    ok = [o for o in out["options"] if o["fits"] and o["days"] <= 3]
    assert out["cheapest"]["days"] <= 3
    assert out["cheapest"]["cost_usd"] == min(o["cost_usd"] for o in ok)


def test_impossible_deadline_says_what_is_possible():
    r = paraplan("estimate", "-t", "llama2-7b", "--tokens", "1T", "--gpus", "h100",
                 "--deadline-days", "0.5", "--max-gpus", "256", "--html", "-")
    assert r.returncode == 1
    assert "no option meets 0.5 days" in r.stdout and "The fastest is h100_sxm x" in r.stdout
    assert "GPUs would be needed" in r.stdout


def test_price_override(tmp_path):
    prices = tmp_path / "p.json"
    prices.write_text(json.dumps({"mi300x": 1.5}))
    r = paraplan("estimate", "-t", "llama2-7b", "--tokens", "1T", "--gpus", "h100,mi300x",
                 "--num-gpus", "64", "--price", "h100=2.0", "--prices", str(prices), "--json",
                 "--html", "-")
    assert r.returncode == 0, r.stderr
    rents = {o["gpu"]: o["rent_per_gpu_hour_usd"] for o in json.loads(r.stdout)["options"]}
    assert rents == {"h100_sxm": 2.0, "mi300x": 1.5}


@pytest.mark.parametrize("args,needle", [
    (["--tokens", "1T", "--gpus", "h900"], "unknown GPU 'h900'; accepted: a100_40g"),
    (["--tokens", "-1T"], "--tokens must be > 0, got '-1T'"),
    (["--tokens", "1T", "--num-gpus", "100"], "multiples of its 8 GPUs per node"),
    (["--tokens", "1T", "--price", "h100=free"], "must be a number of USD per GPU-hour"),
    (["--tokens", "1T", "--deadline-days", "-2"], "--deadline-days must be > 0"),
    (["--tokens", "1T", "--gpus", "a100_80g", "--precision", "fp8"], "not supported by a100_80g"),
])
def test_bad_input(args, needle):
    r = paraplan("estimate", "-t", "llama2-7b", *args, "--html", "-")
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
