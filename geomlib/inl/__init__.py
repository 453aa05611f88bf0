"""INL (seed 004): integrator neuron layers, iterated toward a learned equilibrium with adaptive
early stopping. `layer` holds the integrator and its stopping rules, `loss` the seed's
IntegratorLoss and cycle scheduler, `model` the language model and `create_model`, `lab` the
training and benchmark harness of notebook 13; `python -m geomlib.inl train|bench|generate`."""
from .layer import IntegratorConfig, IntegratorNeuronLayer  # noqa: F401
from .loss import CYCLE_PRESETS, LOSS_PRESETS, EquilibriumExplorationScheduler, IntegratorLoss, create_cycle_scheduler  # noqa: F401
from .model import (SIZES, INLConfig, IntegratorLanguageModel, KVCache, create_model, parameter_breakdown,  # noqa: F401
                    parameter_table, size_config, transformer_like)
