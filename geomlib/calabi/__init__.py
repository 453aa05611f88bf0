"""Calabi (seed 001): SVD compression of linear layers. `svd` holds the seed's layer, model utilities
and demo beside the activation-aware methods (ASVD, SVD-LLM whitening), `lab` the measurements of
notebook 11 (cached), `ledger` its claims and verdicts; `python -m geomlib.calabi` is the seed's demo."""
from .svd import (CalibrationStats, OptimizedCalabiYauLinear, OptimizedCYModelUtils, collect_calibration,  # noqa: F401
                  compress_hf_model, decompose, load_hf_model, rank_for_ratio)
