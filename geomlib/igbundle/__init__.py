"""IGBundle (seed 000): information-geometric bundle adapters, measured against LoRA and a Houlsby
adapter. `adapter` holds the seed's module and sheaf losses, `host` attaches adapters to any causal
LM and handles checkpoints, `train` trains and evaluates them, `app` is the seed's chat UI;
`python -m geomlib.igbundle train|verify|validate|chat` are the seed's commands."""
from geomlib import lazy_exports

_EXPORTS = {
    "HoulsbyAdapter": "adapter", "IGBundleAdapter": "adapter", "IGBundleConfig": "adapter",
    "MixtureState": "adapter", "NormalisedSheafLoss": "adapter", "SheafLoss": "adapter",
    "adapter_params": "adapter", "scaled": "adapter",
    "attach": "host", "detach": "host", "load": "host", "save": "host", "verify": "host",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)   # submodules load on first use (fast --help)
