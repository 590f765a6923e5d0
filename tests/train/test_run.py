"""A short run end to end through the CLI: run folder, metrics, checkpoints, plots, summary, then eval."""

from __future__ import annotations

import json

from safetensors import safe_open

from train_helpers import run_cli


def test_train_end_to_end_then_eval(tmp_path, tiny_args, capsys):
    rc = run_cli(["train", *tiny_args, "--output", tmp_path, "--name", "run", "--seed", "3"])
    assert rc == 0
    run = tmp_path / "run"
    out = capsys.readouterr().out
    assert "top1" in out and "run folder" in out  # the final summary table
    for f in ("config.yaml", "metrics.jsonl", "last.json", "best.json", "summary.json", "curves.png", "resolution.png"):
        assert (run / f).is_file(), f
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    kinds = [r["type"] for r in recs]
    assert kinds[0] == "run" and kinds.count("val") == 2 and "train" in kinds
    finals = {r["img_size"]: r for r in recs if r["type"] == "final"}
    assert sorted(finals) == [16, 24]
    assert all(r["images"] == 64 and 0 <= r["top1"] <= r["top5"] <= 100 for r in finals.values())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["train_images"] == 96 and summary["status"] == "finished"
    # the weights file carries what eval needs to rebuild the model
    last = json.loads((run / "last.json").read_text())
    assert last["step"] == 12 and last["epoch"] == 2 and last["optimizer"]["param_groups"]
    with safe_open(str(run / last["weights"]), "pt") as f:
        meta = f.metadata()
    assert meta["model"] == "tic_nano" and json.loads(meta["model_kwargs"])["head_dim"] == 8
    # eval of the same weights reproduces the final evaluation at every size
    rc = run_cli(["eval", "--checkpoint", run / "last.json", "--img-size", 16, 24, "--limit-val", 64,
                  "--json", tmp_path / "eval.json"])
    assert rc == 0
    table = capsys.readouterr().out
    assert table.split()[:7] == ["model", "top1", "top1_err", "top5", "top5_err", "param_count", "img_size"]
    doc = json.loads((tmp_path / "eval.json").read_text())
    # the result names what was evaluated, on which data, by which code, on which CPU
    import hashlib

    assert doc["data_sha256"] == hashlib.sha256(open(doc["data"], "rb").read()).hexdigest() and doc["images"] == 64
    assert doc["checkpoint"].endswith("last.json") and doc["git_commit"] and doc["isa"] and doc["command"]
    res = doc["results"]
    for r in res:
        assert abs(r["top1"] - finals[r["img_size"]]["top1"]) < 1e-6
        assert r["param_count"] > 0


def test_resume_without_checkpoint_reports_clearly(tmp_path, tiny_args, capsys):
    rc = run_cli(["train", *tiny_args, "--output", tmp_path, "--resume", tmp_path / "nowhere"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--resume: no complete checkpoint" in err and "nowhere" in err


def test_eval_rejects_missing_checkpoint(tmp_path, capsys):
    assert run_cli(["eval", "--checkpoint", tmp_path / "missing.safetensors"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bare_msaconv_means_train():
    from msaconv.cli import DEFAULT_COMMAND, build_parser

    assert DEFAULT_COMMAND == "train"
    args = build_parser().parse_args([DEFAULT_COMMAND])
    assert args.command == "train" and args.model is None  # all defaults: the main job
