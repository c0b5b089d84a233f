"""Multi-node `paraplan run` on one machine: two "nodes" on 127.0.0.1 meeting at a c10d
rendezvous, a node that never joins, a bad endpoint, and `paraplan launch --slurm`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

from executor.train import TrainConfig, train_reference
from planner.measurement import Measurement
from planner.plan import Plan
from planner.transformer import load_transformer

# tp inside a node (ranks 0,1 and 2,3), dp across the two nodes
DP2_TP2 = {"dp": 2, "tp": 2, "pp": 1, "micro_batch_size": 1, "global_batch_size": 4,
           "precision": "fp32"}
ENV = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node(rank: int, port: int, cwd, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "planner.cli", "run", "--plan", json.dumps(DP2_TP2), "--steps",
         "3", "--warmup", "1", "--threads", "1", "--out", "m.json", "--nnodes", "2",
         "--node-rank", str(rank), "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id",
         "test", "--max-seconds", "120", *extra],
        cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"node did not finish in {timeout} s:\n{out}")
    return proc.returncode, out


def test_two_nodes_match_one_process(tmp_path):
    port = free_port()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    procs = [node(0, port, tmp_path / "a"), node(1, port, tmp_path / "b")]
    results = [finish(p, 150) for p in procs]
    for code, out in results:
        assert code == 0, out
    assert "node 1 done" in results[1][1]
    assert not (tmp_path / "b" / "m.json").exists()
    m = Measurement.model_validate_json((tmp_path / "a" / "m.json").read_text())
    assert [r.rank for r in m.memory] == [0, 1, 2, 3]
    assert [r.node_rank for r in m.memory] == [0, 0, 1, 1]
    assert all(r.host == socket.gethostname() for r in m.memory)
    ref, _ = train_reference(load_transformer("tiny"), Plan(**DP2_TP2), TrainConfig(), 3)
    np.testing.assert_allclose(m.losses, ref, rtol=1e-5, atol=1e-5)


def test_missing_node_is_named(tmp_path):
    start = time.monotonic()
    code, out = finish(node(0, free_port(), tmp_path, "--rdzv-timeout", "10"), 60)
    assert code != 0
    assert time.monotonic() - start < 10 + 30, out
    assert "timed out after 10 s" in out and "node_rank 1 never joined" in out, out


def paraplan(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner.cli", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=60)


def test_bad_endpoint_is_one_line(tmp_path):
    for endpoint in ("127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", ":29500", "host:port"):
        r = paraplan("run", "--plan", json.dumps(DP2_TP2), "--nnodes", "2",
                     "--rdzv-endpoint", endpoint, cwd=tmp_path)
        assert r.returncode == 2, r.stdout + r.stderr
        lines = (r.stdout + r.stderr).strip().splitlines()
        assert len(lines) == 1 and "--rdzv-endpoint" in lines[0], lines


def test_world_must_be_nodes_times_procs(tmp_path):
    r = paraplan("run", "--plan", json.dumps(DP2_TP2), "--nnodes", "2", "--nproc-per-node",
                 "3", "--rdzv-endpoint", "127.0.0.1:29500", cwd=tmp_path)
    assert r.returncode == 2 and "not --nnodes 2 x --nproc-per-node 3" in r.stdout + r.stderr


def test_tp_across_nodes_warns():
    from executor.launch import groups_spanning_nodes
    assert groups_spanning_nodes(Plan(**DP2_TP2), "tp", 2) == 0
    assert groups_spanning_nodes(Plan(**DP2_TP2), "dp", 2) == 2
    assert groups_spanning_nodes(Plan(**{**DP2_TP2, "order": "dp-tp-cp-pp"}), "tp", 2) == 2


def test_launch_slurm_writes_sbatch(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps(DP2_TP2))
    r = paraplan("launch", "--slurm", "--nodes", "2", "--plan", "plan.json", "-o", "job.sh",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    text = (tmp_path / "job.sh").read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --gpus-per-node=2", "scontrol show hostnames", "srun ",
                 "--rdzv-backend c10d", "--node-rank $SLURM_NODEID",
                 "--rdzv-endpoint $MASTER_ADDR:29500", "--rdzv-id $SLURM_JOB_ID"):
        assert line in text, line
    assert sum(x.startswith("# ") for x in text.splitlines()) >= 5
    bad = paraplan("launch", "--slurm", "--nodes", "3", "--plan", "plan.json", cwd=tmp_path)
    assert bad.returncode == 2 and "not --nodes 3" in bad.stdout + bad.stderr
