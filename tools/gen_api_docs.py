"""Write docs/api/<module>.md for every public module of msaconv, from its docstrings and signatures.

Run from the repository root: ``python tools/gen_api_docs.py`` (``--check`` exits 1 if a page is stale).
A module's public names are its ``__all__`` or, without one, its names that do not start with ``_`` and
are defined in it. Private modules (a ``_`` in the dotted path) are skipped.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "api"
# modules that need an optional extra to import are documented when it is installed
SKIP_PREFIXES = ("msaconv.cli.",)


def _modules() -> list[str]:
    import msaconv

    names = ["msaconv"]
    for info in pkgutil.walk_packages(msaconv.__path__, "msaconv."):
        if any(part.startswith("_") for part in info.name.split(".")) or info.name.startswith(SKIP_PREFIXES):
            continue
        names.append(info.name)
    return sorted(names)


def _public(mod) -> list[str]:
    names = getattr(mod, "__all__", None)
    if names is not None:
        return list(names)
    out = []
    for name, obj in vars(mod).items():
        if name.startswith("_"):
            continue
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", None) == mod.__name__:
            out.append(name)
    return sorted(out)


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def _doc(obj) -> str:
    return inspect.cleandoc(obj.__doc__) if obj.__doc__ else "*(no docstring)*"


def render(modname: str) -> str:
    mod = importlib.import_module(modname)
    lines = [f"# `{modname}`", "", _doc(mod), ""]
    for name in _public(mod):
        obj = getattr(mod, name, None)
        if obj is None:
            continue
        if inspect.isclass(obj):
            lines += [f"## class `{name}{_signature(obj)}`", "", _doc(obj), ""]
            for mname, meth in vars(obj).items():
                if mname.startswith("_") or not (inspect.isfunction(meth) or isinstance(meth, property)):
                    continue
                fn = meth.fget if isinstance(meth, property) else meth
                sig = "" if isinstance(meth, property) else _signature(fn)
                lines += [f"### `{name}.{mname}{sig}`", "", _doc(fn), ""]
        elif callable(obj):
            lines += [f"## `{name}{_signature(obj)}`", "", _doc(obj), ""]
        else:
            lines += [f"## `{name}`", "", f"`{type(obj).__name__}` = `{obj!r}`"[:300], ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a committed page differs from its docstrings")
    args = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    pages = {f"{m}.md": render(m) for m in _modules()}
    index = ["# msaconv API", "", "Generated from docstrings by `python tools/gen_api_docs.py`; do not edit.", ""]
    index += [f"- [`{name[:-3]}`]({name})" for name in sorted(pages)]
    pages["index.md"] = "\n".join(index) + "\n"
    stale = [n for n, text in pages.items() if not (OUT / n).exists() or (OUT / n).read_text() != text]
    if args.check:
        for n in stale:
            print(f"stale: docs/api/{n}")
        return 1 if stale else 0
    for n in stale:
        (OUT / n).write_text(pages[n])
    print(f"docs/api: {len(pages)} pages, {len(stale)} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
