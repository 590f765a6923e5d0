import sys
from pathlib import Path

# the tiny-model helpers of the training tests (train_helpers.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
