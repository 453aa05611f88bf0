"""INL (seed 004): integrator neuron layers, iterated toward a learned equilibrium with adaptive
early stopping. `layer` holds the integrator and its stopping rules, `loss` the seed's
IntegratorLoss and cycle scheduler, `model` the language model and `create_model`, `lab` the
training and benchmark harness of notebook 13; `python -m geomlib.inl train|bench|generate`."""
from geomlib import lazy_exports

_EXPORTS = {
    "IntegratorConfig": "layer", "IntegratorNeuronLayer": "layer",
    "CYCLE_PRESETS": "loss", "LOSS_PRESETS": "loss", "EquilibriumExplorationScheduler": "loss",
    "IntegratorLoss": "loss", "create_cycle_scheduler": "loss",
    "SIZES": "model", "INLConfig": "model", "IntegratorLanguageModel": "model", "KVCache": "model",
    "create_model": "model", "parameter_breakdown": "model", "parameter_table": "model", "size_config": "model",
    "transformer_like": "model",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)   # submodules load on first use (fast --help)
