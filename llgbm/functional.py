"""Seed 002's `llgbm.functional` names, kept where it puts them (the code is `llgbm.core.functional`)."""
from llgbm.core.functional import FunctionalLoRA, compute_delta_differentiable  # noqa: F401
