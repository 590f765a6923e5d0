"""Issue 9.1: SIGKILL at 10 seeded points (during a step, during evaluation, while a checkpoint file is being
written, between a checkpoint's files and its pointer), each followed by ``--resume auto``: the final weights
equal an uninterrupted run's bit for bit, and after every kill the newest complete checkpoint is never older
than before the kill (nothing lost) and every file it names reads back (nothing half-written).

The kills come from ``MSACONV_TEST_KILL=<point>:<n>`` (``msaconv.train.checkpoint.fault_point``), so they land
at the same place on a loaded machine as on an idle one; the runs are forked from one driver process
(_fork_runner.py) so torch is imported once.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from train_helpers import TINY, assert_same_weights, final_weights

HERE = Path(__file__).resolve().parent
# 96 images / batch 8 = 12 steps per epoch, 2 epochs; a checkpoint every 2 steps; 2 eval batches of 32
ARGS = [*TINY, "--batch-size", "8", "--set", "checkpoint_every=2", "--set", "eval_batch_size=32",
        "--set", "eval_sizes=[16]", "--seed", "3"]
POINTS = {"step": 3, "eval": 2, "write": 6, "save": 2}  # point -> largest n drawn


def kill_specs(seed: int = 9, count: int = 10) -> list[str]:
    rng = random.Random(seed)
    names = list(POINTS) * 2 + [rng.choice(list(POINTS)) for _ in range(count - 2 * len(POINTS))]
    rng.shuffle(names)
    return [f"{p}:{rng.randint(1, POINTS[p])}" for p in names]


def test_sigkill_at_10_seeded_points_resumes_bit_identical(tmp_path):
    specs = kill_specs()
    assert len(specs) == 10 and {s.split(":")[0] for s in specs} == set(POINTS)
    job = {"ref_args": ["train", *ARGS, "--output", tmp_path, "--name", "ref"],
           "kill_args": ["train", *ARGS, "--output", tmp_path, "--name", "killed", "--resume", "auto"],
           "run_dir": str(tmp_path / "killed"), "specs": specs}
    job = json.loads(json.dumps(job, default=str))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MSACONV_TEST_KILL", None)
    p = subprocess.Popen([sys.executable, str(HERE / "_fork_runner.py"), json.dumps(job)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=600)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, 9)
            p.wait()
    assert p.returncode == 0, err[-3000:]
    recs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["run"] for r in recs] == ["reference", *specs, "final"], err[-3000:]
    assert recs[0]["rc"] == 0, err[-3000:]

    prev_last = prev_best = None
    for r in recs[1:-1]:
        assert r["rc"] == -9, f"{r['run']}: the run was not killed there (exit {r['rc']}): {err[-2000:]}"
        # nothing lost: a complete checkpoint never goes back; nothing half-written: each named file reads back
        if prev_last is not None:
            assert r["last"] is not None and r["last"] >= prev_last, r
        if prev_best is not None:
            assert r["best"] is not None and r["best"] >= prev_best, r
        for tag in ("last", "best"):
            assert r[f"{tag}_pointer_exists"] == (r[tag] is not None), f"{tag}.json exists but is incomplete: {r}"
            if r[tag] is not None:
                assert r[f"{tag}_readable"], r
        prev_last, prev_best = r["last"], r["best"]
    print("kill points and the last complete checkpoint step after each:",
          ", ".join(f"{r['run']}->{r['last']}" for r in recs[1:-1]))
    # the kills landed at different places of the run (not all before the first checkpoint)
    assert len({r["last"] for r in recs[1:-1]}) >= 4, recs

    final = recs[-1]
    assert final["rc"] == 0, err[-3000:]
    assert final["last"] == 24
    # no leftovers: the pointers, the files they name, and the run's own files
    assert not [f for f in final["files"] if ".tmp" in f], final["files"]
    ckpt_files = sorted(f for f in final["files"] if f.endswith(".safetensors"))
    assert ckpt_files == sorted({f"last-{24:08d}.safetensors", f"last-{24:08d}.state.safetensors",
                                 f"best-{final['best']:08d}.safetensors",
                                 f"best-{final['best']:08d}.state.safetensors"})
    assert_same_weights(final_weights(tmp_path / "ref"), final_weights(tmp_path / "killed"))
    ref_metrics = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    got_metrics = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in got_metrics if m["type"] == "train"]
    assert steps == [m["step"] for m in ref_metrics if m["type"] == "train"]
    # validation results are those of the uninterrupted run (same weights at each evaluation)
    key = lambda ms: [(m["step"], m["top1"], round(m["loss"], 6)) for m in ms if m["type"] in ("val", "final")]  # noqa: E731
    assert key(got_metrics) == key(ref_metrics)
