"""Coordinate-modulated weights (seed 003). `modulation` holds the modulated linear layer and the
coordinate predictor, `host` attaches them to any Hugging Face causal LM (`modulate`) and builds the
seed's `GeometricLlama`; `generation` is the seed's generator (refinement, EMA context, adaptive
decoding) and `training` its curriculum; `python -m geomlib.coordinates verify|generate`."""
from geomlib import lazy_exports

_EXPORTS = {
    "GenerationConfig": "generation", "GeometricGenerator": "generation",
    "SEED_CONFIG": "host", "SEED_WAVELETS": "host", "CoordinateConfig": "host", "CoordinateHost": "host",
    "GeometricLlama": "host", "modulate": "host",
    "CoordinateModulatedLinear": "modulation", "CoordinatePredictor": "modulation",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)   # submodules load on first use (fast --help)
