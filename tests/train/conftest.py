import pytest

from train_helpers import TINY


@pytest.fixture
def tiny_args():
    return list(TINY)
