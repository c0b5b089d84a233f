"""The `paraplan` command line: contract JSON, tables, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from planner.cli import main

PLAN_175B = json.dumps({"dp": 16, "tp": 8, "pp": 8, "micro_batch_size": 1,
                        "global_batch_size": 1536, "recompute": "full"})


def paraplan(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """Run the installed entry point as a user would."""
    return subprocess.run([sys.executable, "-m", "planner.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "COLUMNS": "160"})


def test_predict_json_contract(tmp_path):
    plan = tmp_path / "p.json"
    plan.write_text(PLAN_175B)
    r = paraplan("predict", "--transformer", "gpt3-175b", "--cluster", "dgx_a100_80g",
                 "--num-nodes", "128", "--plan", str(plan), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("step_time_s", "tokens_per_s", "model_tflops_per_gpu", "mfu", "memory", "fits",
                "breakdown"):
        assert key in out
    assert out["memory"]["peak_bytes"] > 0 and isinstance(out["fits"], bool)
    assert set(out["breakdown"]) >= {"compute_s", "tp_comm_s", "pp_comm_s", "dp_comm_s",
                                     "cp_comm_s", "bubble_s", "optimizer_s"}


def test_predict_human_output(capsys):
    assert main(["predict", "-t", "gpt3-175b", "-c", "dgx_a100_80g", "-n", "128",
                 "--plan", PLAN_175B]) == 0
    out = capsys.readouterr().out
    assert "step time breakdown" in out and "memory per GPU" in out and "fits" in out


def test_the_search_hint_runs_as_printed(tmp_path):
    """`paraplan search` says "try `paraplan predict --plan best_plan.json`": that command,
    as printed, predicts the plan on the transformer and cluster (at its size) the file
    records, with the stack named where the search used another built-in one."""
    r = paraplan("search", "-t", "llama3-8b", "-c", "dgx_h100", "-n", "2", "--stack",
                 "torchtitan", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    hint = r.stdout.split("(try `")[1].split("`)")[0]
    assert hint == "paraplan predict --plan best_plan.json --stack torchtitan"
    got = paraplan(*hint.split()[1:], "--json", cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    out = json.loads(got.stdout)
    assert (out["transformer"], out["cluster"], out["num_gpus"], out["stack"]) == \
        ("llama3-8b", "dgx_h100", 16, "torchtitan")
    bare = json.loads((tmp_path / "best_plan.json").read_text())
    del bare["transformer"], bare["cluster"]
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    for extra, needle in (([], "--transformer is required (-t): the plan file records no "
                               "transformer"),
                          (["-t", "llama3-8b"], "--cluster is required (-c): the plan file "
                                                "records no cluster")):
        e = paraplan("predict", "--plan", "bare.json", *extra, cwd=tmp_path)
        assert e.returncode == 2 and e.stderr.strip().count("\n") == 0 and needle in e.stderr


@pytest.mark.parametrize("args,needle", [
    (["predict", "-t", "gpt3-175b", "-c", "dgx_z900", "--plan", PLAN_175B],
     "unknown cluster preset 'dgx_z900'; accepted: dgx_a100_40g"),
    (["predict", "-t", "gpt5", "-c", "dgx_h100", "--plan", PLAN_175B],
     "unknown transformer preset 'gpt5'"),
    (["predict", "-t", "gpt3-175b", "-c", "dgx_a100_80g", "-n", "128", "--plan",
      '{"dp": 16, "tp": 8, "pp": 8, "micro_batch_size": 1, "global_batch_size": 1536, '
      '"schedule": "zigzag"}'],
     "field 'schedule': Input should be '1f1b', 'gpipe' or 'interleaved_1f1b'"),
    (["predict", "-t", "gpt3-175b", "-c", "dgx_a100_80g", "--plan", PLAN_175B],
     "but the cluster has 8 GPUs"),
    (["search", "--num-nodes", "-3"], "--num-nodes must be >= 1, got -3"),
    (["search", "--precision", "fp8", "-c", "dgx_a100_80g"], "not supported by a100_80g"),
    (["predict", "-t", "gpt3-175b"], "the following arguments are required"),
])
def test_bad_input_is_one_line_exit_2(args, needle):
    r = paraplan(*args)
    assert r.returncode == 2
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_malformed_profile_file(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"name": "x", "gpu": "a100_80g", "gpus_per_node": "eight"}))
    r = paraplan("search", "-c", str(bad))
    assert r.returncode == 2 and "field 'gpus_per_node'" in r.stderr
    assert "Traceback" not in r.stderr


def test_search_prints_tables_and_writes_best_plan(tmp_path):
    r = paraplan("search", "-t", "llama2-7b", "-c", "dgx_a100_80g", "-n", "2", "-b", "64",
                 "--out", "best.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "top 10 plans by step time" in r.stdout and "Pareto front" in r.stdout
    assert "pruned candidates" in r.stdout
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["global_batch_size"] == 64
    # The written plan feeds straight back into predict.
    p = paraplan("predict", "-t", "llama2-7b", "-c", "dgx_a100_80g", "-n", "2",
                 "--plan", str(tmp_path / "best.json"), "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["fits"] is True
    assert not list(tmp_path.glob(".best.json*"))  # no temp file left behind


def test_search_explains_when_nothing_fits(tmp_path):
    r = paraplan("search", "-t", "llama3-405b", "-c", "dgx_a100_40g", "-n", "1", "-b", "8",
                 "--out", "-", cwd=tmp_path)
    assert r.returncode == 1
    assert "no plan fits" in r.stdout and "--num-nodes" in r.stdout


def test_search_json(tmp_path):
    r = paraplan("search", "-t", "tiny", "-c", "dgx_h100", "-b", "16", "--json", "--out", "-")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["top"] and out["pareto"] and out["candidates"] >= out["valid"] >= out["fitting"]


def test_presets_lists_everything(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("gpt3-175b", "llama3-405b", "tiny", "a100_80g", "mi300x", "dgx_b200", "hgx_h200"):
        assert name in out
