"""``msaconv mixers``: the table prints every requested mixer with its measurements."""

from __future__ import annotations

import json

from msaconv.cli import main
from msaconv.bench.mixers import mixer_table


def test_mixers_table_cli(capsys, tmp_path):
    out = tmp_path / "rows.jsonl"
    rc = main(["mixers", "--dim", "16", "--size", "12x12", "--alt-size", "13x9", "--heads", "2", "--repeats", "1",
               "--only", "halo", "spectral", "channel", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "C=16 on 12x12" in text and "runs 13x9" in text
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln.split() and ln.split()[0] in ("halo", "spectral", "channel")}
    assert set(lines) == {"halo", "spectral", "channel"}
    assert "built for 12x12 maps, got 13x9" in lines["spectral"] and "not counted: aten._fft" in lines["spectral"]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["name"] for r in rows] == ["halo", "spectral", "channel"]
    assert rows[0]["alt_size_ok"] and not rows[1]["alt_size_ok"] and rows[0]["gmacs"] > 0


def test_table_times_relative_to_global_and_counts_cpu_sdpa():
    rows = mixer_table(16, (8, 8), (9, 7), 2, 1, ["global", "halo"])
    g = rows[0]
    assert g.name == "global" and g.rel_time == 1.0 and g.alt_size_ok
    # CPU SDPA is counted: 2 * N^2 * C MACs for the attention + 4 N C^2 for the projections
    N, C = 64, 16
    assert abs(g.gmacs * 1e9 - (2 * N * N * C + 4 * N * C * C)) < 1
    assert rows[1].rel_time is not None and rows[1].params > 0
