"""The model benchmark (design/benchmarks.md §2): timm ``benchmark.py``'s columns for any models, one run.

For each model at one image size and batch size (default: the model's own ``input_size``):

- ``infer_samples_per_sec`` / ``infer_step_time`` (ms): ``model(x)`` in eval mode under ``no_grad``;
- ``train_samples_per_sec`` / ``train_step_time`` (ms): one SGD step (momentum 0.9, lr 1e-4, as timm's
  benchmark) on cross-entropy against random targets, in train mode: zero_grad, forward, backward, step;
- ``param_count`` (millions) and ``gmacs`` (per image, forward, counted by
  :func:`msaconv.models.count_flops`, so ``msa_conv2d`` is included through its registered formula);
- ``infer_peak_mb`` / ``train_peak_mb``: the RSS high-water mark of one step above the RSS before it
  (model, optimizer state and input excluded; activations, gradients and outputs included), measured in a
  fresh child process per model (:mod:`.memory`: ``VmHWM`` is per process).

``memory_format``: ``'contiguous'`` (NCHW, default), ``'channels_last'`` (model and input, as timm's
``--channels-last`` and the engine's ``channels_last``), or ``'both'``: each model twice in a row, NCHW
then channels-last, so the two are interleaved in time (an A/B on a shared machine).

Times are the median (with p10/p90) of ``runs`` timed steps after ``warmup`` untimed ones
(:func:`.common.time_fn`). Every record carries the environment stamp (:func:`.common.environment`).

Models: any name of :func:`msaconv.models.list_models`; timm's models with a ``timm:`` prefix, or by a
bare name that msaconv does not register, when timm is importable. A model that fails to build or run
records the error instead of stopping the run; an unknown name stops it before anything is timed.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, cast

import torch
from torch import nn

from . import common, memory

TIMM_PREFIX = "timm:"
# timm benchmark.py's columns, in its order, then ours
COLUMNS: tuple[str, ...] = ("model", "infer_samples_per_sec", "infer_step_time", "train_samples_per_sec",
                            "train_step_time", "batch_size", "img_size", "param_count", "gmacs",
                            "infer_peak_mb", "train_peak_mb")
TIMM_PEERS: tuple[str, ...] = ("resnet50", "convnext_tiny", "swin_tiny_patch4_window7_224", "halonet26t",
                               "deit_small_patch16_224")


@dataclass
class ModelBenchConfig:
    """What ``msaconv bench model`` runs."""

    models: list[str] = field(default_factory=lambda: ["tic_nano"])
    img_size: int | None = None  # None: each model's pretrained_cfg input_size
    batch_size: int = 32
    runs: int = 5
    warmup: int = 2
    train: bool = True
    memory: bool = True
    threads: int | None = None
    seed: int = 0
    lr: float = 1e-4
    memory_format: str = "contiguous"  # 'contiguous' (NCHW) | 'channels_last' | 'both' (each model in both, in turn)
    amp: str = "none"  # 'none' (float32) | 'bf16' (both steps under bfloat16 autocast, as training with amp=bf16)
    # | 'both' (each model in float32, then bf16, in turn: an interleaved A/B)


MEMORY_FORMATS = ("contiguous", "channels_last", "both")
AMPS = {"none": ["none"], "bf16": ["bf16"], "both": ["none", "bf16"]}  # --amp -> the precisions each model runs in


def timm_problem() -> str | None:
    """None when timm imports here, else why not (and the fix)."""
    if importlib.util.find_spec("timm") is None:
        return "timm is not installed in this Python (install it: pip install timm)"
    try:
        import timm  # noqa: F401
    except Exception as e:  # a broken install says what broke
        return f"import timm failed ({type(e).__name__}: {e})"
    return None


def resolve(name: str) -> tuple[str, str]:
    """``(source, name)`` with source ``'msaconv'`` or ``'timm'``; a ValueError naming the model and the fix.

    ``timm:NAME`` is timm's model; a bare name is msaconv's when registered there, else timm's when timm
    imports and knows it.
    """
    from ..models import list_models
    from .._errors import did_you_mean
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"msaconv bench model: expected a model name, got {name!r}")
    name = name.strip()
    if name.startswith(TIMM_PREFIX):
        bare = name[len(TIMM_PREFIX):]
        why = timm_problem()
        if why is not None:
            raise ValueError(f"msaconv bench model: model {name!r} needs timm, but {why}; or drop it from --models")
        import timm

        if not timm.is_model(bare):
            raise ValueError(f"msaconv bench model: timm has no model {bare!r};"
                             f"{did_you_mean(bare, timm.list_models())} see timm.list_models()")
        return "timm", bare
    ours = list_models()
    if name in ours:
        return "msaconv", name
    why = timm_problem()
    if why is None:
        import timm

        if timm.is_model(name):
            return "timm", name
        hint = did_you_mean(name, ours + list(timm.list_models()))
        raise ValueError(f"msaconv bench model: unknown model {name!r}: neither msaconv nor timm registers it;{hint} "
                         f"see msaconv.list_models() and timm.list_models()")
    hint = did_you_mean(name, ours)
    raise ValueError(f"msaconv bench model: unknown model {name!r}:{hint or ''} msaconv does not register it, and "
                     f"timm's models are unavailable because {why}. Use one of msaconv.list_models() ({len(ours)} "
                     f"models), or install timm to benchmark timm's (e.g. --models timm:resnet50)")


def build(name: str, img_size: int | None = None) -> tuple[nn.Module, str, tuple[int, int, int]]:
    """``(model, source, input_size)`` for a name of :func:`resolve`; input_size is ``(C, H, W)``."""
    source, bare = resolve(name)
    if source == "msaconv":
        from ..models import create_model

        model = create_model(bare)
    else:
        import timm

        model = timm.create_model(bare)
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        default = tuple(cfg.get("input_size", (3, 224, 224)))
        if img_size is not None and cfg.get("fixed_input_size") and img_size != default[-1]:
            model = timm.create_model(bare, img_size=img_size)  # position embeddings / windows sized for it
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    c, h, w = tuple(cfg.get("input_size", (3, 224, 224)))
    if img_size is not None:
        h = w = img_size
    return model, source, (int(c), int(h), int(w))


def num_outputs(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    return int(n) if isinstance(n, int) and n > 0 else 0


def _steps(model: nn.Module, input_size: tuple[int, int, int], batch_size: int, seed: int,
           lr: float, channels_last: bool = False, amp: str = "none") -> tuple[Callable[[], object], Callable[[], object]]:
    """The inference step and the train step of ``model`` on one random batch (``channels_last``: the model
    and the batch in that memory format; ``amp='bf16'``: the forward under bfloat16 autocast)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, *input_size, generator=g)
    if channels_last:
        cast(Any, model).to(memory_format=torch.channels_last)  # torch's stubs leave out this keyword
        x = x.contiguous(memory_format=torch.channels_last)
    n = num_outputs(model)
    target = torch.randint(0, max(n, 1), (batch_size,), generator=g)
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def autocast():
        return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp == "bf16")

    def infer() -> object:
        model.eval()
        with torch.no_grad(), autocast():
            return model(x)

    def train() -> object:
        model.train()
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = model(x).float()
        if out.ndim != 2 or n == 0:  # a feature model: a scalar of its output stands in for the loss
            loss = out.float().pow(2).mean()
        else:
            loss = loss_fn(out, target)
        loss.backward()
        opt.step()
        return loss.detach()

    return infer, train


def memory_setup(name: str, img_size: int | None, batch_size: int, mode: str, seed: int = 0, lr: float = 1e-4,
                 channels_last: bool = False, amp: str = "none"):
    """The memory child's entry point: one inference or train step of ``name`` (model built in the child)."""
    model, source, input_size = build(name, img_size)
    infer, train = _steps(model, input_size, batch_size, seed, lr, channels_last, amp)
    return (infer if mode == "infer" else train), {"mode": mode}


def _cpu_timed(step: Callable[[], object], into: list[float]) -> Callable[[], object]:
    """``step`` that also appends the CPU time of this process (every thread) of each call to ``into``: on a
    shared machine the wall time swings with the other jobs, the CPU time much less."""
    def call() -> object:
        c0 = time.process_time()
        out = step()
        into.append(time.process_time() - c0)
        return out
    return call


def _first_line(e: BaseException) -> str:
    """``Type: first line``; a bare ``assert`` has no message, so then where it failed."""
    msg = str(e).strip().splitlines()
    if msg:
        return f"{type(e).__name__}: {msg[0]}"[:300]
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    outside = [f for f in frames if "/torch/" not in f.filename.replace("\\", "/")]  # not torch's _assert helper
    where = ""
    if outside or frames:
        f = (outside or frames)[-1]
        where = f" (raised at {Path(f.filename).parent.name}/{Path(f.filename).name}:{f.lineno}: {f.line})"
    return f"{type(e).__name__}{where}"[:300]


def run_model_bench(cfg: ModelBenchConfig, command: str | None = None, output: str | Path | None = None,
                    log: Callable[[str], None] = print) -> list[dict]:
    """Benchmark every model of ``cfg``; return the records (appended to ``output`` as they come)."""
    for arg in ("batch_size", "runs"):
        v = getattr(cfg, arg)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"msaconv bench model: {arg} must be a positive int, got {v!r}")
    if cfg.img_size is not None and (isinstance(cfg.img_size, bool) or not isinstance(cfg.img_size, int)
                                     or cfg.img_size < 1):
        raise ValueError(f"msaconv bench model: img_size must be a positive int or None (each model's own), "
                         f"got {cfg.img_size!r}")
    if not cfg.models:
        raise ValueError("msaconv bench model: no models given; e.g. --models tic_nano,hier_nano_global")
    if cfg.memory_format not in MEMORY_FORMATS:
        raise ValueError(f"msaconv bench model: memory_format must be one of {list(MEMORY_FORMATS)}, got "
                         f"{cfg.memory_format!r}; e.g. --memory-format both for an interleaved NCHW / channels-last A/B")
    if cfg.amp not in AMPS:
        raise ValueError(f"msaconv bench model: amp must be one of {list(AMPS)}, got {cfg.amp!r}; e.g. --amp bf16")
    sources = {name: resolve(name)[0] for name in cfg.models}  # an unknown name fails before any timing
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    env = common.environment(command)
    timm_version = None
    if "timm" in sources.values():
        import timm

        timm_version = timm.__version__
    formats = {"contiguous": [False], "channels_last": [True], "both": [False, True]}[cfg.memory_format]
    records: list[dict] = []
    for name, cl, amp in ((n, c, a) for n in cfg.models for c in formats for a in AMPS[cfg.amp]):
        rec: dict = {**env, "loadavg_1m": common.load_average(), "kind": "model", "model": name,
                     "source": sources[name], "batch_size": cfg.batch_size, "img_size": cfg.img_size,
                     "runs": cfg.runs, "warmup": cfg.warmup, "channels_last": cl, "amp": amp}
        if timm_version is not None:
            rec["timm"] = timm_version
        try:
            torch.manual_seed(cfg.seed)
            model, _, input_size = build(name, cfg.img_size)
            rec["img_size"] = input_size[-1]
            rec["input_size"] = list(input_size)
            rec["num_classes"] = num_outputs(model)
            fl = count_macs(model, input_size)
            rec.update(param_count=round(fl["params"] / 1e6, 3), params=fl["params"], gmacs=fl["gmacs"],
                       msa_core=fl["msa_core"])
            infer, train = _steps(model, input_size, cfg.batch_size, cfg.seed, cfg.lr, cl, amp)
            cpu: list[float] = []
            t = common.time_fn(_cpu_timed(infer, cpu), cfg.warmup, cfg.runs)
            rec.update(infer_step_time=t.median_s * 1e3, infer_step_time_p10=t.p10_s * 1e3,
                       infer_step_time_p90=t.p90_s * 1e3, infer_samples_per_sec=cfg.batch_size / t.median_s,
                       infer_first_call_ms=t.first_call_s * 1e3,
                       infer_cpu_ms=statistics.median(cpu[-t.runs:]) * 1e3)
            if cfg.train:
                cpu = []
                t = common.time_fn(_cpu_timed(train, cpu), cfg.warmup, cfg.runs)
                rec.update(train_step_time=t.median_s * 1e3, train_step_time_p10=t.p10_s * 1e3,
                           train_step_time_p90=t.p90_s * 1e3, train_samples_per_sec=cfg.batch_size / t.median_s,
                           train_first_call_ms=t.first_call_s * 1e3,
                           train_cpu_ms=statistics.median(cpu[-t.runs:]) * 1e3)
            rec.update(achieved_gflops(rec))
            del model, infer, train
        except Exception as e:  # a model that cannot run here records why; the others go on
            rec["error"] = _first_line(e)
        if cfg.memory and "error" not in rec:
            modes = ["infer"] + (["train"] if cfg.train else [])
            cases = [{"target": "msaconv.bench.model:memory_setup",
                      "kwargs": {"name": name, "img_size": rec["img_size"], "batch_size": cfg.batch_size,
                                 "mode": m, "seed": cfg.seed, "lr": cfg.lr, "channels_last": cl,
                                 "amp": amp}} for m in modes]
            for m, res in zip(modes, memory.measure_in_child(cases, torch.get_num_threads())):
                if "error" in res:
                    rec[f"{m}_peak_error"] = res["error"]
                else:
                    rec[f"{m}_peak_mb"] = res["peak_bytes_above_inputs"] / 2 ** 20
        records.append(rec)
        if output is not None:
            common.write_jsonl(output, [rec])
        log(_line(rec))
    return records


def achieved_gflops(rec: dict) -> dict:
    """Achieved GFLOP/s of a record: counted forward MACs x 2 per image x batch / median step time for
    inference; x 3 for a training step (forward + backward, the usual 1 + 2 approximation)."""
    flop = 2e9 * rec["gmacs"] * rec["batch_size"]  # forward FLOPs of one step
    out = {"infer_gflops": flop / (rec["infer_step_time"] * 1e-3) / 1e9}
    if "train_step_time" in rec:
        out["train_gflops"] = 3 * flop / (rec["train_step_time"] * 1e-3) / 1e9
    return out


def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> dict:
    """:func:`msaconv.models.count_flops` of ``model`` at ``input_size`` (batch 1)."""
    from ..models import count_flops

    return count_flops(model, tuple(input_size), batch_size=1)


def _fmt(v: object, digits: int = 3) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:.0f}"
    return str(v)


def _line(rec: dict) -> str:
    if "error" in rec:
        return f"  {_label(rec):<28} failed: {rec['error']}"
    parts = [f"{_label(rec):<28} {rec['img_size']:>4}px b{rec['batch_size']}",
             f"{rec['param_count']:.2f}M {rec['gmacs']:.3g} GMACs",
             f"infer {rec['infer_samples_per_sec']:.1f}/s ({rec['infer_step_time']:.1f} ms)"]
    if "train_step_time" in rec:
        parts.append(f"train {rec['train_samples_per_sec']:.1f}/s ({rec['train_step_time']:.1f} ms, "
                     f"{rec.get('train_gflops', 0):.1f} GFLOP/s)")
    for m in ("infer", "train"):
        if f"{m}_peak_mb" in rec:
            parts.append(f"{m} peak {rec[f'{m}_peak_mb']:.0f} MB")
    return "  " + ", ".join(parts)


def _label(rec: dict) -> str:
    """The model's name, with ``(channels_last)`` / ``(bf16)`` when the record ran in that memory format / precision."""
    tags = [t for t, on in (("channels_last", rec.get("channels_last")), ("bf16", rec.get("amp") == "bf16")) if on]
    return rec["model"] + (f" ({', '.join(tags)})" if tags else "")


def markdown(records: Iterable[dict]) -> str:
    """timm benchmark.py's table (plus peak memory) from the records of one or more runs."""
    rows = [r for r in records if r.get("kind") == "model"]
    if not rows:
        return "(no model records)\n"
    first = rows[0]
    loads = [r["loadavg_1m"] for r in rows if r.get("loadavg_1m") is not None]
    commands = list(dict.fromkeys(r["command"] for r in rows))
    out = [("Runs: " if len(commands) > 1 else "Run: ") + "; ".join(f"`{c}`" for c in commands), "",
           f"torch {first['torch']}" + (f", timm {first['timm']}" if first.get("timm") else "") +
           f", msaconv {first['msaconv']} (commit {first['git_commit']}), {first['cpu']} "
           f"({first.get('cpu_capability', '?')}), {first['threads']} threads, {first['time_utc']}."]
    if loads:
        out.append(f"Machine load (1-minute load average on {first.get('cpu_count', '?')} CPUs): {min(loads):.1f} "
                   f"to {max(loads):.1f}; other jobs shared the cores, so compare models within a run.")
    out += ["", "| model | infer samples/s | infer step ms | train samples/s | train step ms | batch | img | "
                "params (M) | GMACs | infer GFLOP/s | train GFLOP/s | train GFLOP/s vs first | infer peak MB | "
                "train peak MB | infer CPU ms | train CPU ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    ref = next((r.get("train_gflops") for r in rows if "error" not in r), None)
    errors = []
    for r in rows:
        if "error" in r:
            errors.append(r)
            out.append(f"| {_label(r)} | failed (see below) | | | | {r['batch_size']} | {_fmt(r.get('img_size'))} "
                       f"| | | | | | | | | |")
            continue
        src = " (timm)" if r.get("source") == "timm" and not r["model"].startswith(TIMM_PREFIX) else ""
        out.append("| " + " | ".join([
            _label(r) + src, _fmt(r["infer_samples_per_sec"]), _fmt(r["infer_step_time"]),
            _fmt(r.get("train_samples_per_sec")), _fmt(r.get("train_step_time")), str(r["batch_size"]),
            str(r["img_size"]), f"{r['param_count']:.2f}", _fmt(r["gmacs"]), _fmt(r.get("infer_gflops")),
            _fmt(r.get("train_gflops")),
            f"{r['train_gflops'] / ref:.2f}x" if ref and r.get("train_gflops") else "",
            _fmt(r.get("infer_peak_mb")) or r.get("infer_peak_error", "")[:40],
            _fmt(r.get("train_peak_mb")) or r.get("train_peak_error", "")[:40],
            _fmt(r.get("infer_cpu_ms")), _fmt(r.get("train_cpu_ms"))]) + " |")
    out += ["", "How to read: step times are medians of the timed steps after warm-up (p10/p90 in the JSON lines); "
            "samples/s = batch / median step time. Inference: eval mode under `no_grad`. Train: one SGD step "
            "(momentum 0.9) on cross-entropy against random targets, gradients set to None each step. GMACs are per "
            "image, forward, counted by `msaconv.models.count_flops` (torch's FLOP counter, with `msa_conv2d` counted "
            "by its registered formula). GFLOP/s: counted forward FLOPs (2 x MACs) x batch / median step time, x 3 "
            "for a training step (forward + backward); \"vs first\" divides by the first model's train GFLOP/s. Peak MB: RSS high-water mark of one step above the RSS just before it, in a "
            "fresh child process per model: activations, gradients and outputs, not weights or optimizer state. "
            "CPU ms: median CPU time of this process (every thread) per timed step; on a machine shared with other "
            "jobs the wall times swing with their load, the CPU times much less."]
    if errors:
        out += ["", "Models that could not run:", ""]
        out += [f"- {_label(r)}: {r['error']}" for r in errors]
    return "\n".join(out) + "\n"
