"""IGBundle (seed 000): information-geometric bundle adapters, measured against LoRA and a Houlsby
adapter. `adapter` holds the seed's module and sheaf losses, `host` attaches adapters to any causal
LM and handles checkpoints, `train` trains and evaluates them, `app` is the seed's chat UI;
`python -m geomlib.igbundle train|verify|validate|chat` are the seed's commands."""
from .adapter import (HoulsbyAdapter, IGBundleAdapter, IGBundleConfig, MixtureState, NormalisedSheafLoss, SheafLoss,  # noqa: F401
                      adapter_params, scaled)
from .host import attach, detach, load, save, verify  # noqa: F401
