"""``msaconv export``: a model to ONNX (standard ops only), verified with onnxruntime at 3 sizes."""

from __future__ import annotations

import argparse

HELP = "export a model to ONNX (standard ops, dynamic batch/H/W) and verify it against PyTorch with onnxruntime"


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(x) for x in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 224 or 224x192, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected a size like 224 or 224x192, got {text!r}")
    return parts[0], parts[1]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a registered model name (see msaconv.list_models())")
    p.add_argument("--checkpoint", metavar="PATH", help="weights: a .safetensors file or a .pt/.pth state dict")
    p.add_argument("--output", required=True, metavar="FILE", help="where to write the .onnx file")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width (default: fixed shape)")
    p.add_argument("--img-size", type=_size, default=None, metavar="HxW",
                   help="example size to trace at (default: the model's pretrained_cfg input size)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 18 (default: 18)")
    p.add_argument("--verify-sizes", default=None, metavar="LIST",
                   help="comma-separated sizes to verify at, e.g. 32,28x30,25 (default: the example size and, "
                        "with --dynamic, two smaller ones)")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")


def _load_weights(model, path: str) -> None:
    import torch

    if path.endswith(".safetensors"):
        from ..train.checkpoint import load_tensors

        state, _ = load_tensors(path)
    elif path.endswith((".pt", ".pth")):
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        state = loaded.get("model", loaded) if isinstance(loaded, dict) else loaded
    else:
        raise ValueError(f"export: --checkpoint {path!r} is neither .safetensors nor .pt/.pth; pass one of those")
    model.load_state_dict(state)


def run(args: argparse.Namespace) -> int:
    from .. import create_model
    from ..export import export_onnx, verify_onnx

    model = create_model(args.model).eval()
    if args.checkpoint:
        _load_weights(model, args.checkpoint)
    if args.img_size is None:
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        h, w = tuple(cfg.get("input_size", (3, 224, 224)))[1:]
    else:
        h, w = args.img_size
    in_chans = int(getattr(model, "in_chans", 3) or 3)
    res = export_onnx(model, args.output, (h, w), batch=2, in_chans=in_chans, dynamic=args.dynamic,
                      opset=args.opset)
    print(f"wrote {res.path} (opset {res.opset}, {'dynamic batch/H/W' if res.dynamic else f'fixed 2x{in_chans}x{h}x{w}'})")
    if res.constraints:
        print("size ranges torch.export kept: " + ", ".join(f"{k} in [{lo}, {'inf' if hi is None else hi}]"
                                                            for k, (lo, hi) in res.constraints.items()))
    if args.no_verify:
        return 0
    if args.verify_sizes:
        sizes = [_size(s) for s in args.verify_sizes.split(",") if s.strip()]
    elif args.dynamic:
        sizes = [(h, w), (h - max(1, h // 8), w - max(1, w // 16)), (h - max(1, h // 4), w)]
    else:
        sizes = [(h, w)] * 3
    batches = [1, 3, 2] if args.dynamic else [2, 2, 2]
    shapes = [(b, in_chans, sh, sw) for b, (sh, sw) in zip(batches * len(sizes), sizes)]
    worst = 0.0
    for c in verify_onnx(model, args.output, shapes):
        worst = max(worst, c.max_abs_diff)
        print(f"  input {'x'.join(map(str, c.shape))}: max abs diff vs PyTorch {c.max_abs_diff:.3g}")
    print(f"max abs diff {worst:.3g}")
    return 0 if worst < 1e-4 else 1
