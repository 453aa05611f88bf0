"""Seed 002's `llgbm.training` names, kept where it puts them (the code is in `llgbm.generator`)."""
from llgbm.generator.losses import DeltaOnlyLoss, MultiTaskLoss  # noqa: F401
from llgbm.generator.sample import evaluate  # noqa: F401
from llgbm.generator.train import TrainingConfig, train  # noqa: F401
