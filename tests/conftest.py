"""The whole suite: ``backend=None`` without measurement (the fixed order of preference), so that which backend a
test meets does not depend on timings; tests/ops/test_autotune.py turns the measurement on where it tests it.
Subprocesses (the CLI tests) inherit the setting."""

import os

os.environ["MSACONV_AUTOTUNE"] = "0"
