"""Issue 17: every function of the training package fits on a screen, so the loop reads as a sequence of short
steps (data, model, optimizer, one step, end of epoch, end of run) instead of one long body."""

from __future__ import annotations

import ast
from pathlib import Path

MAX_LINES = 60
TRAIN = Path(__file__).resolve().parents[2] / "src" / "msaconv" / "train"


def _lengths() -> list[tuple[int, str]]:
    """(lines from ``def`` to the last line of the body, file:function) for every function and method."""
    out = []
    for path in sorted(TRAIN.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno is not None
                out.append((node.end_lineno - node.lineno + 1, f"{path.name}:{node.name}"))
    return out


def test_the_package_has_functions_to_measure():
    names = {name for _, name in _lengths()}
    assert {"engine.py:_train", "data.py:load_split", "evaluate.py:evaluate"} <= names


def test_every_train_function_is_at_most_60_lines():
    long = sorted((n, name) for n, name in _lengths() if n > MAX_LINES)
    assert not long, f"functions over {MAX_LINES} lines: " + ", ".join(f"{name} ({n})" for n, name in long)
