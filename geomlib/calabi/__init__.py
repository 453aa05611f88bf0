"""Calabi (seed 001): SVD compression of linear layers. `svd` holds the seed's layer, model utilities
and demo beside the activation-aware methods (ASVD, SVD-LLM whitening), `lab` the measurements of
notebook 11 (cached), `ledger` its claims and verdicts; `python -m geomlib.calabi` is the seed's demo."""
from geomlib import lazy_exports

_EXPORTS = {
    "CalibrationStats": "svd", "OptimizedCalabiYauLinear": "svd", "OptimizedCYModelUtils": "svd",
    "collect_calibration": "svd", "compress_hf_model": "svd", "decompose": "svd", "load_hf_model": "svd",
    "rank_for_ratio": "svd",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)   # submodules load on first use (fast --help)
