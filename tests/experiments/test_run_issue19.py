"""tools/run_issue19.sh: the whole experiment set at the budget, the way a later session starts it."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

from msaconv.experiments import _common as C
from msaconv.experiments import get_experiment, report


def test_run_issue19_script_runs_every_experiment_with_valid_options(tmp_path):
    """tools/run_issue19.sh with a stub for msaconv: the commands it would run, parsed by the experiments' own
    argument parsers (an option renamed in an experiment fails here, not hours into the background run)."""
    script = Path(__file__).resolve().parents[2] / "tools" / "run_issue19.sh"
    log = tmp_path / "calls.txt"
    stub = tmp_path / "msaconv-stub"
    stub.write_text(f'#!/usr/bin/env bash\necho "$@" >> {log}\n')
    stub.chmod(0o755)
    env = {**os.environ, "MSACONV": str(stub), "STOP_BELOW_BAR": "0", "NICE": "0"}
    subprocess.run(["bash", str(script)], check=True, env=env, capture_output=True, timeout=60)
    calls = [line.split() for line in log.read_text().splitlines()]
    assert [c[1] for c in calls] == ["ablation", "resolution", "ablation", "mixers", "erf", "report"]
    for c in calls:
        assert c[0] == "experiment"
        p = argparse.ArgumentParser()
        (report if c[1] == "report" else get_experiment(c[1])).add_arguments(p)
        args = p.parse_args(c[2:])
        if c[1] != "report":
            assert (args.data, args.epochs, args.workers, args.threads) == ("embedded", C.DEFAULT_EPOCHS, 1, 1)

