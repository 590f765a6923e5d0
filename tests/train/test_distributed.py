"""torchrun with 2 processes: DDP over gloo, sharded data, metrics reduced, rank 0 alone writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from msaconv.train.distributed import DistInfo, shard
from train_helpers import TINY, final_weights

import torch


def test_shard_covers_everything_once():
    idx = torch.arange(10)
    parts = [shard(idx, DistInfo(rank=r, world_size=3)) for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 4]
    assert set(torch.cat(parts).tolist()) == set(range(10))  # 2 padded by wrapping, as DistributedSampler
    assert torch.equal(shard(idx, DistInfo()), idx)


def test_torchrun_two_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "msaconv",
           "train", *TINY, "--output", str(tmp_path), "--name", "ddp", "--seed", "2"]
    # own session, so a hang kills torchrun *and* its workers instead of leaving them orphaned
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError("torchrun did not finish in 300 s:\n" + stdout + stderr) from None
    p = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("run folder:") == 1  # rank 0 alone prints the summary
    run = tmp_path / "ddp"
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert recs[0]["world_size"] == 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 6  # 96 images / (2 ranks x 16) x 2 epochs
    # evaluation is sharded and summed: all 64 validation images counted once
    assert all(r["images"] == 64 for r in recs if r["type"] in ("val", "final"))
    train_recs = [r for r in recs if r["type"] == "train"]
    assert train_recs and all(r["loss"] > 0 for r in train_recs)
    w = final_weights(run)
    assert all(torch.isfinite(v).all() for v in w.values() if v.is_floating_point())
