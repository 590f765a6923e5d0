"""One seed-paper token mixer per file; importing this package registers them all."""

from . import msa_conv  # noqa: F401
from . import (  # noqa: F401
    axial,
    cam,
    channel,
    global_attn,
    global_gate,
    glmix,
    gpsa,
    halo,
    hilo,
    kdgqa,
    lowtention,
    moh,
    pam,
    shsa,
    sparse_gsa,
    spectral,
    ulsam,
)
