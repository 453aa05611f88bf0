"""Coordinate-modulated weights (seed 003). `modulation` holds the modulated linear layer and the
coordinate predictor, `host` attaches them to any Hugging Face causal LM (`modulate`) and builds the
seed's `GeometricLlama`; `generation` is the seed's generator (refinement, EMA context, adaptive
decoding) and `training` its curriculum; `python -m geomlib.coordinates verify|generate`."""
from .generation import GenerationConfig, GeometricGenerator  # noqa: F401
from .host import SEED_CONFIG, SEED_WAVELETS, CoordinateConfig, CoordinateHost, GeometricLlama, modulate  # noqa: F401
from .modulation import CoordinateModulatedLinear, CoordinatePredictor  # noqa: F401
