"""Delta activations Δ = v(adapted) − v(base), v the mean last-layer last-token hidden state over probe
texts (`probes`), computed and cached per adapter (`activations`: DeltaCache). Seed 002's names are
importable from here as it writes them (`from llgbm.delta import DeltaCache`)."""
from llgbm.delta.activations import DeltaCache, compute_adapter_delta, compute_base_activation  # noqa: F401
