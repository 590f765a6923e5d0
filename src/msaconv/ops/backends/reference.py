"""The oracle backend: :mod:`msaconv.ops.reference` behind the backend interface."""

from __future__ import annotations

from .._checks import Problem
from ..reference import msa_conv2d_reference


class ReferenceBackend:
    name = "reference"
    fallback = True  # the readable definition, for tests: never measured against the fused backends
    layout = "bhwd"

    def can_run(self, pb: Problem) -> str | None:
        return None  # any option, dtype and device; slow and K times the memory of k

    def forward(self, q, k, v, extra_k, extra_v, pb: Problem):
        return msa_conv2d_reference(q, k, v, pb, extra_k, extra_v)


BACKEND = ReferenceBackend()
