"""``msaconv analyze`` end to end on an untrained tic_nano and the embedded images."""

from __future__ import annotations

import json

import pytest

from msaconv.analysis.run import AnalysisConfig, run_analysis
from msaconv.cli import main


@pytest.mark.parametrize("kind", ["distance", "erf", "attention", "heads"])
def test_analyze_writes_rows_and_pictures(kind, tmp_path, capsys):
    assert main(["analyze", kind, "--model", "tic_nano", "--images", "4", "--output", str(tmp_path)]) == 0
    lines = (tmp_path / f"tic_nano-{kind}.jsonl").read_text().splitlines()
    rows = [json.loads(l) for l in lines]
    assert rows and all(r["kind"] == kind and r["images"] == 4 for r in rows)
    if kind != "heads":
        assert (tmp_path / f"tic_nano-{kind}.png").stat().st_size > 1000
    if kind == "distance":
        assert {r["layer"] for r in rows} >= {"stages.0.blocks.0.mixer"}
        assert all(r["distance"] >= 0 for r in rows)
    assert "results:" in capsys.readouterr().out


def test_analyze_errors(tmp_path):
    with pytest.raises(ValueError, match=r"pass --checkpoint PATH \(a trained run\) or --model NAME"):
        run_analysis(AnalysisConfig("erf", output=str(tmp_path)))
    with pytest.raises(ValueError, match=r"unknown analysis 'dist'; did you mean 'distance'\?"):
        run_analysis(AnalysisConfig("dist", model="tic_nano", output=str(tmp_path)))
    with pytest.raises(ValueError, match=r"--images must be >= 1, got 0"):
        run_analysis(AnalysisConfig("erf", model="tic_nano", images=0, output=str(tmp_path)))
