"""One seed-paper token mixer per file; importing this package registers them all."""

from . import msa_conv  # noqa: F401
