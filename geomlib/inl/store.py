"""Where INL runs live and how they are read back: one folder per (model config, lab config) under
LLGBM_HOME/inl, holding one `llgbm.core.checkpoint` file (weights, AdamW state, history); every load
goes through `checkpoint.load`, so a missing, truncated, non-finite or mismatched file is refused
with its name. Folders of the layout before that helper (state.json beside the weights) still load."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from llgbm.core import checkpoint
from llgbm.core.utils import config_hash, llgbm_home

from .model import INLConfig, IntegratorLanguageModel

CHECKPOINT = "checkpoint.safetensors"     # a run's weights, AdamW state and history (llgbm.core.checkpoint)
NOT_KEYED = ("eval_every", "bench_prompt", "bench_new_tokens", "seeds", "bench_repeats", "small_k", "memory_steps",
             "determinism_steps")          # lab settings that do not change what a run trains


def run_folder(model_cfg: INLConfig, lab_cfg, tag: str) -> Path:
    """The run folder of `model_cfg` trained under the lab config `lab_cfg` (an INLLabConfig)."""
    keep = {k: v for k, v in asdict(lab_cfg).items() if k not in NOT_KEYED}
    return llgbm_home() / "inl" / f"{tag}-{config_hash(dict(model=asdict(model_cfg), lab=keep, v=1))}"


def save_run(run: Path, model, opt, params, state: dict) -> None:
    run.mkdir(parents=True, exist_ok=True)
    checkpoint.save(run / CHECKPOINT, state, model=model, opt=opt, params=params)


def load_trained(run: Path | str, vocab_size: int | None = None) -> tuple[IntegratorLanguageModel, dict]:
    """(model in eval mode, its saved state) from a run folder or its checkpoint file, verified by
    `checkpoint.load` (present, readable, finite, fitting the config it was saved with); `vocab_size`,
    when given, must be the checkpoint's (the corpus it will read)."""
    run = Path(run)
    if not run.exists():
        raise FileNotFoundError(f"no INL checkpoint at {run}: pass a run folder that `python -m geomlib.inl train` wrote")
    legacy = run.is_dir() and not (run / CHECKPOINT).exists() and (run / "state.json").exists()
    path = run if legacy or run.is_file() else run / CHECKPOINT
    try:
        state = json.loads((run / "state.json").read_text()) if legacy else checkpoint.read_state(path)
    except ValueError as e:
        raise ValueError(f"{path} is not a readable INL checkpoint ({e})") from None
    if not isinstance(state.get("config"), dict):
        raise ValueError(f"{path} is not an INL run checkpoint: its state has no model config")
    cfg = INLConfig(**state["config"])
    if vocab_size is not None and cfg.vocab_size != vocab_size:
        raise ValueError(f"{path} was trained on a vocabulary of {cfg.vocab_size} tokens, this corpus has {vocab_size}: "
                         f"pass the --profile it was trained with")
    model = IntegratorLanguageModel(cfg)
    if legacy:
        checkpoint.load_legacy_folder(run, model=model)
    else:
        checkpoint.load(path, model=model)
    return model.eval(), state
