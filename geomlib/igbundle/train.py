"""Training adapters on an instruction mixture of the suite's tasks, as the seed's train.py does on
Alpaca (which cannot be downloaded here): IGBundle, a Houlsby adapter at the same position, or peft
LoRA on all 7 projections, with the loss on answer tokens (+ the sheaf loss for IGBundle).

`IGTrainConfig.from_yaml` reads the seed's config keys (base_model_id, ig_adapter, lora, training,
loss). A run checkpoints every `save_steps` (adapter + AdamW state as safetensors, trainer state as
JSON) and resumes after an interruption; each step's batch is a function of (seed, step), so a
resumed run takes exactly the steps an uninterrupted one would. Runs are content-keyed: a finished
run is loaded, not retrained."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from llgbm.core import artefacts, checkpoint, models
from llgbm.core.lora import LORA_TARGETS
from llgbm.core.tasks import get_task
from llgbm.core.timing import rss_mb
from llgbm.core.utils import atomic_write_json, check_known, check_values, check_profile, config_hash, llgbm_home, preset_config, warmup_lr
from llgbm.eval.scoring import build_batch, encode_pairs, target_logprobs

from . import host as hosting
from .adapter import IGBundleConfig

METHODS = ("igbundle", "houlsby", "lora")
MIXTURE = ("country_en_to_de", "country_en_to_fr", "country_to_alpha2", "language_to_alpha2",
           "number_words_en", "number_words_fr", "add_1", "caesar_1")      # 8 training tasks, 4 families


@dataclass
class IGTrainConfig:
    model: str = "smollm2"                      # the seed's base_model_id: a preset or a local folder
    method: str = "igbundle"                    # igbundle | houlsby | lora
    tasks: tuple[str, ...] = MIXTURE
    max_steps: int = 60
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-3                 # the seed's 2e-5 is for 7B models and 1000+ steps
    warmup: int = 5
    max_grad_norm: float = 0.3
    save_steps: int = 20
    logging_steps: int = 10
    load_in_4bit: bool = False                  # NF4 base through bitsandbytes
    slow_step_pause: float = 0.0                # the seed's SlowStepCallback: seconds of pause per step
    lora_rank: int = 8                          # method 'lora': rank on all 7 projections (α = 2·rank)
    seed: int = 0
    output_dir: str | None = None               # None: a content-keyed folder under LLGBM_HOME/igbundle
    ig: IGBundleConfig = field(default_factory=IGBundleConfig)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {', '.join(METHODS)}")
        for t in self.tasks:
            get_task(t)                          # raises with the known names
        if self.max_steps < 1 or self.per_device_train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError("max_steps, per_device_train_batch_size and gradient_accumulation_steps must be ≥ 1")

    @classmethod
    def preset(cls, profile: str, **overrides) -> "IGTrainConfig":
        base = {"smoke": dict(model="tiny", tasks=MIXTURE[:4], max_steps=4, per_device_train_batch_size=2, save_steps=2,
                              ig=IGBundleConfig(bottleneck_dim=16, latent_dim=8, num_categories=4)),
                "quick": dict(), "full": dict(max_steps=300, save_steps=50)}[check_profile(profile)]
        return preset_config(cls, base, overrides)

    @classmethod
    def from_yaml(cls, path: Path | str, **overrides) -> "IGTrainConfig":
        """The seed's YAML layout (`YAML_KEYS`); every section and key must be known: an unknown one
        is named, with the section's known keys, as the YAML spells them."""
        import yaml
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML ({' '.join(str(e).split())})") from None
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must be a YAML mapping of sections ({', '.join(YAML_KEYS)}), got {type(raw).__name__}")
        check_known(raw, YAML_KEYS, f"top-level key(s) in {path}:")
        sections = {}
        for name, keys in YAML_KEYS.items():
            value = raw.get(name) or {}
            if keys is not None:
                if not isinstance(value, dict):
                    raise ValueError(f"{path}: the {name}: section must be a mapping of keys ({', '.join(keys)}), got {value!r}")
                check_known(value, keys, f"key(s) in the {name}: section of {path}:")
                sections[name] = dict(value)
        for name, section in sections.items():
            check_values(cls if name == "training" else IGBundleConfig, section, f"{path}: {name}:",
                         dict(lambda_glue="sheaf_weight", r="lora_r"))
        ig = {**sections["ig_adapter"], **sections["loss"]}
        if "lambda_glue" in ig:
            ig["sheaf_weight"] = ig.pop("lambda_glue")
        lora = sections["lora"]
        if lora:
            if "r" not in lora:
                raise ValueError(f"{path}: the lora: section needs r (its rank; remove the section for adapters alone)")
            targets = tuple(lora.get("target_modules", ("q_proj", "k_proj", "v_proj", "o_proj")))
            check_known(targets, LORA_TARGETS, f"lora target_modules in {path}:")
            ig.update(lora_r=lora["r"], lora_alpha=lora.get("lora_alpha", 32), lora_targets=targets)
        train = sections["training"]
        if "tasks" in sections["data"]:
            if not isinstance(sections["data"]["tasks"], list) or not sections["data"]["tasks"]:
                raise ValueError(f"{path}: data: tasks must be a list of task names, as [add_1, caesar_1]")
            train["tasks"] = tuple(sections["data"]["tasks"])
        return replace(cls(model=raw.get("base_model_id", "smollm2"), ig=IGBundleConfig.from_dict(ig), **train), **overrides)

    def to_yaml(self) -> dict:
        """This config in the seed's YAML layout, as `from_yaml` reads it back (tested round trip)."""
        ig = self.ig.to_dict()
        loss = dict(lambda_glue=ig.pop("sheaf_weight"), num_patches=ig.pop("num_patches"), tau=ig.pop("tau"))
        lora = dict(r=ig.pop("lora_r"), lora_alpha=ig.pop("lora_alpha"), target_modules=list(ig.pop("lora_targets")))
        if ig["hidden_size"] is None:
            ig.pop("hidden_size")
        out = dict(base_model_id=self.model, ig_adapter=ig, loss=loss, data=dict(tasks=list(self.tasks)),
                   training={k: v for k, v in asdict(self).items() if k in YAML_KEYS["training"] and v is not None})
        return out | (dict(lora=lora) if lora["r"] is not None else {})

    def run_key(self) -> str:
        d = asdict(self)
        for k in ("save_steps", "logging_steps", "slow_step_pause", "output_dir", "max_steps"):
            d.pop(k)
        return config_hash(d, 12)

    def run_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else llgbm_home() / "igbundle" / f"{self.method}-seed{self.seed}-{self.run_key()}"


# The YAML's sections and their keys, as the seed's config spells them (None: a scalar, not a section).
YAML_KEYS = {"base_model_id": None,
             "ig_adapter": tuple(f.name for f in fields(IGBundleConfig)
                                 if f.name not in ("sheaf_weight", "num_patches", "tau", "lora_r", "lora_alpha", "lora_targets")),
             "lora": ("r", "lora_alpha", "target_modules"),
             "training": tuple(f.name for f in fields(IGTrainConfig) if f.name not in ("ig", "model", "tasks")),
             "loss": ("lambda_glue", "num_patches", "tau"),
             "data": ("tasks",)}


def load_base(cfg: IGTrainConfig):
    """(model, tokenizer) in fp32, or with an NF4 (bitsandbytes) base when `cfg.load_in_4bit`."""
    if not cfg.load_in_4bit:
        return models.load_model(cfg.model, device="cpu")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(models.resolve_model_path(cfg.model), quantization_config=q,
                                                 device_map="cpu").eval()
    return model, models.load_tokenizer(cfg.model)


def add_adapters(model, cfg: IGTrainConfig):
    """Attach the method's adapters; returns (trainable parameters by name, host or None)."""
    torch.manual_seed(cfg.seed)
    if cfg.method == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        model.requires_grad_(False)
        inject_adapter_in_model(LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, target_modules=list(LORA_TARGETS),
                                           lora_dropout=0.0), model)
        return {n: p for n, p in model.named_parameters() if "lora_" in n}, None
    host = hosting.attach(model, replace(cfg.ig), cfg.method)
    params = {f"igbundle.{n}": p for n, p in host.named_parameters()}
    params.update({n: p for n, p in model.named_parameters() if "lora_" in n})
    return params, host


def _batch(encoded, n: int, seed: int, step: int, micro: int):
    rng = np.random.default_rng([seed, step, micro])
    return [encoded[i] for i in rng.choice(len(encoded), size=min(n, len(encoded)), replace=False)]


def _save(run: Path, step: int, params: dict, opt, history: dict, model, base_fp: str, host, model_name: str) -> None:
    checkpoint.save(run / "state.safetensors", dict(step=step, history=history),
                    weights={f"param/{n}": p for n, p in params.items()}, opt=opt, params=list(params.values()))
    if host is not None:
        hosting.save(model, run / f"checkpoint-{step}", base_fp, extra=dict(step=step, model=model_name))
        for old in sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[:-2]:
            shutil.rmtree(old, ignore_errors=True)


def _load(run: Path, params: dict, opt) -> tuple[int, dict]:
    weights, state = checkpoint.load(run / "state.safetensors", opt=opt, params=list(params.values()))
    if "step" not in state:          # written before checkpoint.save, its state sat beside it
        state = json.loads((run / "trainer_state.json").read_text())
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[f"param/{n}"])
    return state["step"], state["history"]


def train(cfg: IGTrainConfig, model=None, tokenizer=None, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train (or resume, or load if finished) one run; returns the model with its adapters attached,
    the trainable parameter count, the history (loss, sheaf, per-layer sigma, seconds per step) and the
    run folder. The caller detaches the adapters (`host.detach(model)` / `unload_lora`) when done."""
    if model is None:
        model, tokenizer = load_base(cfg)
    base_fp = models.model_fingerprint(cfg.model) if not cfg.load_in_4bit else "nf4-" + models.model_fingerprint(cfg.model)
    params, host = add_adapters(model, cfg)
    opt = torch.optim.AdamW(params.values(), lr=cfg.learning_rate, weight_decay=0.0)
    run = cfg.run_dir()
    run.mkdir(parents=True, exist_ok=True)
    start, history = 0, {"loss": [], "sheaf": [], "sigma": [], "seconds": []}
    if (run / "state.safetensors").exists():
        start, history = _load(run, params, opt)
    atomic_write_json(run / "config.json", dict(asdict(cfg), ig=cfg.ig.to_dict()))
    encoded = [e for t in cfg.tasks for e in encode_pairs(tokenizer, get_task(t), get_task(t).train)]
    model.train()
    for step in tqdm(range(start, cfg.max_steps), desc=f"{cfg.method} seed {cfg.seed}", disable=not progress,
                     initial=start, total=cfg.max_steps, leave=False):
        t0 = time.perf_counter()
        torch.manual_seed(int(np.random.default_rng([cfg.seed, step, 7]).integers(2**62)))   # dropout, per step
        opt.zero_grad(set_to_none=True)
        total = sheaf = 0.0
        for micro in range(cfg.gradient_accumulation_steps):
            batch = build_batch(_batch(encoded, cfg.per_device_train_batch_size, cfg.seed, step, micro), tokenizer.pad_token_id)
            loss = -target_logprobs(model, batch).mean()
            glue = host.sheaf_value() if host is not None else torch.zeros(())
            ((loss + cfg.ig.sheaf_weight * glue) / cfg.gradient_accumulation_steps).backward()
            total += loss.item() / cfg.gradient_accumulation_steps
            sheaf += float(glue.detach()) / cfg.gradient_accumulation_steps
        torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.max_grad_norm)
        for g in opt.param_groups:
            g["lr"] = warmup_lr(cfg.learning_rate, step, cfg.warmup)
        opt.step()
        if not np.isfinite(total):
            raise FloatingPointError(f"{cfg.method} training diverged at step {step} (loss {total}); lower learning_rate")
        history["loss"].append(total)
        history["sheaf"].append(sheaf)
        history["sigma"].append([host.sigma[i] for i in sorted(host.sigma)] if host is not None and host.sigma else [])
        if cfg.slow_step_pause:
            time.sleep(cfg.slow_step_pause)
        history["seconds"].append(time.perf_counter() - t0)
        done = step + 1
        if done % cfg.save_steps == 0 or done == cfg.max_steps or done == stop_after:
            _save(run, done, params, opt, history, model, base_fp, host, cfg.model)
        if stop_after is not None and done >= stop_after:
            break
    model.eval()
    peak_mb = rss_mb(peak=True)
    end = max(start, min(cfg.max_steps, stop_after or cfg.max_steps))
    artefacts.used(run, trained=start < end, seconds=float(sum(history["seconds"][start:])), steps=(start, end))
    return dict(model=model, tokenizer=tokenizer, host=host, params=sum(p.numel() for n, p in params.items()
                                                                        if "sheaf" not in n),
                history=history, run_dir=run, peak_rss_mb=peak_mb, resumed_from=start)


def unload(model) -> None:
    """Remove every adapter this module attached (IGBundle/Houlsby hosts and LoRA layers)."""
    hosting.detach(model)
    hosting.remove_lora(model)
