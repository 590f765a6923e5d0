"""Crash-resume driver, run as a subprocess by test_crash_resume.py.

It imports msaconv once (the slow part) and never runs a torch kernel itself, so forking is safe: each run is a
forked child executing ``msaconv train`` with ``MSACONV_TEST_KILL=<point>:<n>`` (see
``msaconv.train.checkpoint.fault_point``), which SIGKILLs itself there. After every child the driver records,
as one JSON line on stdout, how the child ended and what the run folder holds: the complete ``last`` / ``best``
checkpoints and whether every file they name parses as safetensors (read with numpy, not torch).

usage: python _fork_runner.py '<json: {"ref_args": [...], "kill_args": [...], "specs": ["step:2", ...]}>'
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _child(args: list[str], spec: str | None) -> int:
    pid = os.fork()
    if pid == 0:  # child: run the CLI, exit with its code (or die by SIGKILL at the fault point)
        code = 1
        os.dup2(2, 1)  # the CLI's own output goes to stderr; stdout carries only the driver's JSON lines
        try:
            if spec:
                os.environ["MSACONV_TEST_KILL"] = spec
            else:
                os.environ.pop("MSACONV_TEST_KILL", None)
            from msaconv.cli import main

            code = main(args)
        except BaseException:  # noqa: BLE001 - report and exit, never return into the driver's loop
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _state(run: Path) -> dict:
    from safetensors import safe_open

    from msaconv.train.checkpoint import read_checkpoint

    out = {"files": sorted(p.name for p in run.iterdir()) if run.is_dir() else []}
    for tag in ("last", "best"):
        doc = read_checkpoint(run / f"{tag}.json") if (run / f"{tag}.json").exists() else None
        out[tag] = None if doc is None else doc["step"]
        out[f"{tag}_pointer_exists"] = (run / f"{tag}.json").exists()
        if doc is not None:
            readable = True
            for key in ("weights", "state"):
                try:
                    with safe_open(str(run / doc[key]), framework="numpy") as f:
                        for k in f.keys():
                            f.get_tensor(k)
                except Exception:  # noqa: BLE001
                    readable = False
            out[f"{tag}_readable"] = readable
    return out


def main() -> None:
    job = json.loads(sys.argv[1])
    import msaconv.cli  # noqa: F401 - the one slow import, shared by every forked run

    rc = _child(job["ref_args"], None)
    print(json.dumps({"run": "reference", "rc": rc}), flush=True)
    run = Path(job["run_dir"])
    for spec in job["specs"]:
        rc = _child(job["kill_args"], spec)
        print(json.dumps({"run": spec, "rc": rc, **_state(run)}), flush=True)
    rc = _child(job["kill_args"], None)
    print(json.dumps({"run": "final", "rc": rc, **_state(run)}), flush=True)


if __name__ == "__main__":
    main()
