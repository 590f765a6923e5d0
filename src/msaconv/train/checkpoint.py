"""Checkpoints that survive ``kill -9``: safetensors for every tensor, JSON for the rest, atomic pointers.

A checkpoint ``<tag>`` (``last`` or ``best``) of a run folder is three files:

- ``<tag>-<step>.safetensors``: the model weights, with metadata (model name, overrides, classes, image
  size, mean/std) so ``msaconv eval`` can rebuild the model from this file alone;
- ``<tag>-<step>.state.safetensors``: optimizer state tensors and EMA weights;
- ``<tag>.json``: the pointer, written last: step, epoch, optimizer param groups and scalar state, the
  learning-rate schedule, the RNG scheme, best metric, and the names and sizes of the two files above.

Every file is written to a temporary name, fsynced and renamed, so a checkpoint is complete exactly when
its JSON exists; older step files are deleted only after the new JSON is in place. Nothing is ever
unpickled: weights load through safetensors, or ``torch.load(weights_only=True)`` for ``.pt``/``.pth``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
from pathlib import Path

import torch

FORMAT = "msaconv-checkpoint-1"


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointWriteError(OSError, ValueError):
    """A checkpoint could not be written (disk full, read-only folder, ...); the previous one is intact.

    A ValueError too, so the CLI prints it as one line instead of a traceback."""


_FAULT_HITS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Test hook for the crash-resume tests: with ``MSACONV_TEST_KILL=<name>:<n>`` in the environment the process
    SIGKILLs itself the n-th time it reaches point ``name``. Points: ``step`` (after an optimizer step, before any
    save), ``eval`` (after each evaluation batch), ``write`` (inside :func:`atomic_write`, data written to the
    temporary file but not renamed), ``save`` (between a checkpoint's files and its pointer). Unset: a no-op."""
    spec = os.environ.get("MSACONV_TEST_KILL")
    if not spec:
        return
    point, _, n = spec.partition(":")
    if point != name:
        return
    _FAULT_HITS[name] = _FAULT_HITS.get(name, 0) + 1
    if _FAULT_HITS[name] == int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename (readers see old or new, never half).

    On failure (disk full, read-only folder) the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            fault_point("write")
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """Write a safetensors file atomically; returns its SHA-256 (recorded in checkpoint pointers)."""
    from safetensors.torch import save

    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    data = save(flat, metadata={k: str(v) for k, v in (metadata or {}).items()})
    atomic_write(path, data)
    return hashlib.sha256(data).hexdigest()


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor and the metadata of a safetensors file; a ValueError naming the file if it is damaged."""
    from safetensors import SafetensorError, safe_open

    out = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            for k in f.keys():
                out[k] = f.get_tensor(k)
    except (SafetensorError, OSError, RuntimeError, ValueError, OverflowError) as e:
        size = Path(path).stat().st_size if Path(path).is_file() else 0
        raise ValueError(f"checkpoint: {str(path)!r} ({size} bytes) is not a readable safetensors file "
                         f"({type(e).__name__}: {e}); it is truncated or corrupted: use another checkpoint "
                         "(e.g. the run's best.json / last.json) or re-create it") from None
    return out, meta


def optimizer_to_flat(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON-able rest."""
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], info: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, k = key.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    for key, v in info.get("scalars", {}).items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    return {"state": state, "param_groups": info["param_groups"]}


def save_checkpoint(run_dir: str | os.PathLike, tag: str, *, step: int, model_state: dict[str, torch.Tensor],
                    model_meta: dict[str, str], optimizer_state: dict | None = None,
                    ema_state: dict[str, torch.Tensor] | None = None, info: dict | None = None) -> Path:
    """Write checkpoint ``tag`` at ``step``; returns the path of its JSON pointer."""
    run_dir = Path(run_dir)
    try:
        return _save_checkpoint(run_dir, tag, step, model_state, model_meta, optimizer_state, ema_state, info)
    except OSError as e:
        prev = read_checkpoint(run_dir / f"{tag}.json")
        kept = (f"the previous checkpoint {str(run_dir / f'{tag}.json')!r} (step {prev['step']}) is intact"
                if prev else "no earlier checkpoint exists")
        err = CheckpointWriteError(
            f"checkpoint: could not write checkpoint {tag!r} at step {step} in {str(run_dir)!r}: "
            f"{e.strerror or e} ({e.filename or run_dir}); {kept}; free disk space or make the folder writable "
            "(or pass --output elsewhere) and continue with --resume auto")
        err.errno = e.errno
        raise err from e


def _save_checkpoint(run_dir, tag, step, model_state, model_meta, optimizer_state, ema_state, info) -> Path:
    stem = f"{tag}-{step:08d}"
    weights = run_dir / f"{stem}.safetensors"
    state_file = run_dir / f"{stem}.state.safetensors"
    weights_sha = save_tensors(weights, model_state, {**model_meta, "step": step, "format": FORMAT})
    tensors: dict[str, torch.Tensor] = {}
    optim_info = None
    if optimizer_state is not None:
        t, optim_info = optimizer_to_flat(optimizer_state)
        tensors.update(t)
    for k, v in (ema_state or {}).items():
        tensors[f"ema.{k}"] = v
    state_sha = save_tensors(state_file, tensors, {"format": FORMAT, "step": step})
    doc = {
        "format": FORMAT,
        "tag": tag,
        "step": step,
        "weights": weights.name,
        "weights_bytes": weights.stat().st_size,
        "state": state_file.name,
        "state_bytes": state_file.stat().st_size,
        "weights_sha256": weights_sha,
        "state_sha256": state_sha,
        "optimizer": optim_info,
        **(info or {}),
    }
    pointer = run_dir / f"{tag}.json"
    fault_point("save")
    atomic_write(pointer, (json.dumps(doc, indent=1) + "\n").encode())
    _cleanup(run_dir)
    return pointer


def _cleanup(run_dir: Path) -> None:
    """Delete step files and temporaries that no pointer names (left by a replaced or interrupted save)."""
    keep = set()
    for p in run_dir.glob("*.json"):
        doc = _read_json(p)
        if doc and doc.get("format") == FORMAT:
            keep.update({doc.get("weights"), doc.get("state")})
    for p in run_dir.iterdir():
        if re.fullmatch(r"(last|best)-\d{8}(\.state)?\.safetensors", p.name) and p.name not in keep:
            p.unlink(missing_ok=True)
        elif p.name.startswith(".") and ".tmp" in p.name:
            p.unlink(missing_ok=True)


def _read_json(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def read_checkpoint(pointer: str | os.PathLike) -> dict | None:
    """The pointer's JSON if the checkpoint is complete (both files present at their recorded sizes), else None."""
    p = Path(pointer)
    doc = _read_json(p)
    if not doc or doc.get("format") != FORMAT:
        return None
    for key in ("weights", "state"):
        f = p.parent / doc[key]
        if not f.is_file() or f.stat().st_size != doc[f"{key}_bytes"]:
            return None
    doc["_dir"] = str(p.parent)
    return doc


def load_checkpoint_file(doc: dict, key: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors of a checkpoint's ``weights`` or ``state`` file, checked against the SHA-256 its pointer recorded
    (a flipped bit in tensor data is otherwise invisible: safetensors has no checksum)."""
    path = Path(doc["_dir"]) / doc[key]
    want = doc.get(f"{key}_sha256")
    if want is not None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != want:
            raise ValueError(f"checkpoint: {str(path)!r} does not match the SHA-256 recorded in its pointer "
                             f"{doc.get('tag', '?')}.json (the file was changed or corrupted on disk); use another "
                             "checkpoint (e.g. best.json) or start the run again")
    return load_tensors(path)


def find_checkpoint(where: str | os.PathLike, tag: str = "last") -> dict | None:
    """Newest complete checkpoint ``tag`` in a run folder, or in any run folder under ``where``."""
    where = Path(where)
    if where.is_file():
        return read_checkpoint(where)
    cands = [where / f"{tag}.json"] if (where / f"{tag}.json").exists() else sorted(where.glob(f"*/{tag}.json"))
    best, best_key = None, None
    for c in cands:
        doc = read_checkpoint(c)
        if doc is not None:
            key = c.stat().st_mtime_ns
            if best_key is None or key > best_key:
                best, best_key = doc, key
    return best


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Model weights and metadata from a checkpoint JSON, a run folder, a ``.safetensors`` file, or a
    ``.pt``/``.pth`` file (``torch.load(weights_only=True)``, never full unpickling)."""
    p = Path(path)
    if p.is_dir() or p.suffix == ".json":
        doc = find_checkpoint(p, "best") if p.is_dir() else read_checkpoint(p)
        if doc is None and p.is_dir():
            doc = find_checkpoint(p, "last")
        if doc is None:
            raise ValueError(f"checkpoint: no complete checkpoint at {str(p)!r}; pass a run folder, its best.json / "
                             "last.json, or a .safetensors file")
        return load_checkpoint_file(doc, "weights")
    if not p.is_file():
        raise ValueError(f"checkpoint: {str(p)!r} does not exist; pass a run folder, a checkpoint .json or a "
                         ".safetensors file")
    if p.suffix == ".safetensors":
        return load_tensors(p)
    if p.suffix in (".pt", ".pth", ".bin"):
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling refusal becomes one clear line
            raise ValueError(f"checkpoint: {str(p)!r} cannot be loaded with weights_only=True ({type(e).__name__}); "
                             "convert it to safetensors") from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ValueError(f"checkpoint: {str(p)!r} does not hold a state dict of tensors")
        return dict(obj), {}
    raise ValueError(f"checkpoint: unsupported file {str(p)!r}; use .safetensors, .json, .pt or .pth")
