"""Repository-level promises: the README's commands and example, CI running the README's test command."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_gives_exactly_two_setup_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    blocks = _bash_blocks(setup)
    assert len(blocks) == 2, blocks
    main_cmd, test_cmd = blocks
    assert "torch==2.13.0" in main_cmd and "torch==2.13.0" in test_cmd
    assert "pytest" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in [line.strip() for line in ci], "the README's test command must appear verbatim in .ci/run"


def test_readme_python_example_runs():
    readme = (ROOT / "README.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", readme, flags=re.S))  # the blocks build on each other
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "torch.Size([2, 4, 57, 43, 32])" in out.stdout
    assert "logits" in code and "features_only" in code


def test_cli_info_lists_every_backend():
    from msaconv.ops import backends

    out = subprocess.run([sys.executable, "-m", "msaconv", "info"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for name in backends.BACKENDS:
        assert name in out.stdout
