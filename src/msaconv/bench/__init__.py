"""Benchmarks: :mod:`.common` (environment, timing, roofline, JSON lines), :mod:`.memory` (peak RSS of a
child process), :mod:`.op` (the operator sweep of design/benchmarks.md §1) and :mod:`.report` (tables and
plots made from the JSON lines)."""
