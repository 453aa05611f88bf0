"""Notebook 12's from-scratch half: a CPU-sized GeometricLlama against the plain Llama of the same
base size, and against itself with the seed's leaking whole-sequence pooling, on pydoc text in one
tokenizer (the seed's optimizer and curriculum for the modulated models); the time per training step
at three sizes of num_coordinates; the θ map (silhouette by family, a 2-D projection)."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from llgbm.core import artefacts
from llgbm.core.stats import cosine_silhouette, silhouette_null
from llgbm.core.tasks import get_task
from llgbm.core.timing import median_time
from llgbm.core.utils import atomic_write_json, check_profile, config_hash, llgbm_home, preset_config, seed_everything
from llgbm.eval.lm import random_windows

from .host import SEED_CONFIG, GeometricLlama
from .training import CurriculumScheduler, checkpoint_state, load_checkpoint, make_optimizer, save_checkpoint, set_learning_rates


@dataclass(frozen=True)
class ScratchConfig:
    hidden_dim: int = 128
    num_layers: int = 4
    num_attention_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    intermediate_dim: int = 384
    num_coordinates: int = 1024
    modulation_rank: int = 12
    predictor_hidden: int = 128
    seq_len: int = 128
    batch_size: int = 8
    steps: int = 200
    lr: float = 3e-3                  # both groups and every model alike (the seed: base 3e-4, coordinates 1e-3)
    warmup: int = 20
    eval_windows: int = 48
    seed: int = 0
    scaling_coordinates: tuple[int, ...] = (256, 1024, 4096)
    scaling_repeats: int = 5

    @classmethod
    def preset(cls, profile: str, **overrides) -> "ScratchConfig":
        base = {"smoke": dict(hidden_dim=32, num_layers=2, head_dim=8, intermediate_dim=64, num_coordinates=32, modulation_rank=3,
                              predictor_hidden=16, seq_len=32, batch_size=4, steps=6, warmup=2, eval_windows=4,
                              scaling_coordinates=(16, 32, 64), scaling_repeats=2),
                "quick": {}, "full": dict(steps=1000, eval_windows=64)}[check_profile(profile)]
        return preset_config(cls, base, overrides)

    def seed_config(self, vocab_size: int, num_coordinates: int | None = None) -> dict:
        """The seed's config layout (its YAML's `model:` keys) at this CPU size."""
        return dict(base_architecture=dict(num_layers=self.num_layers, hidden_dim=self.hidden_dim, num_attention_heads=self.num_attention_heads,
                                           num_kv_heads=self.num_kv_heads, head_dim=self.head_dim, vocab_size=vocab_size,
                                           max_seq_len=max(256, self.seq_len), intermediate_dim=self.intermediate_dim),
                    coordinate_system=dict(num_coordinates=num_coordinates or self.num_coordinates, modulation_rank=self.modulation_rank),
                    coordinate_predictor=dict(hidden_dim=self.predictor_hidden, num_layers=2))


KINDS = ("geometric", "leaky", "plain", "geometric_zero_init", "leaky_zero_init")


def build(kind: str, cfg: ScratchConfig, vocab_size: int, num_coordinates: int | None = None):
    """'geometric' (causal θ, the seed's init), 'leaky' (the seed's whole-sequence pooling and init),
    'plain' (no modulation), and the '_zero_init' variants whose output factors start at zero, so
    training starts from the plain Llama instead of weights swamped by ΔW entries ≈ 0.29."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {', '.join(KINDS)}")
    conf = cfg.seed_config(vocab_size, num_coordinates)
    if kind == "plain":
        return GeometricLlama(conf, modulated=False)
    return GeometricLlama(conf, pooling="sequence" if kind.startswith("leaky") else "causal",
                          init="zero" if kind.endswith("zero_init") else "seed")


def _step(model, kind: str, x, y, sched, step: int):
    lm = model if kind == "plain" else model.model
    loss = torch.nn.functional.cross_entropy(lm(input_ids=x).logits.flatten(0, 1), y.flatten())
    aux = {}
    if kind != "plain" and sched is not None:
        aux = sched.losses(step, model.last_theta, groups=torch.arange(len(x)))
    return loss, loss + sum(aux.values()) if aux else loss


@torch.no_grad()
def val_loss(model, kind: str, windows: torch.Tensor, seq_len: int) -> float:
    lm = model if kind == "plain" else model.model
    lm.eval()
    x, y = windows[:-1].view(-1, seq_len), windows[1:].view(-1, seq_len)
    nll = sum(torch.nn.functional.cross_entropy(lm(input_ids=x[i:i + 8]).logits.flatten(0, 1), y[i:i + 8].flatten(),
                                                reduction="sum").item() for i in range(0, len(x), 8))
    lm.train()
    return nll / y.numel()


def train_scratch(kind: str, corpus: dict, cfg: ScratchConfig, progress: bool = True) -> dict:
    """Train one model from scratch on the shared windows (cached as JSON by config): the modulated
    ones with the seed's two-group AdamW and its curriculum's auxiliary θ losses, the plain one with the
    same AdamW on its weights. Returns {history, val_loss, params, seconds}."""
    V = len(corpus["vocab"])
    run = scratch_dir(kind, cfg, V)
    if (run / "result.json").exists():
        artefacts.used(run, trained=False)
        return json.loads((run / "result.json").read_text())
    from tqdm.auto import tqdm
    seed_everything(cfg.seed)
    model = build(kind, cfg, V)
    opt = (torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.1) if kind == "plain"
           else make_optimizer(model, cfg.lr, cfg.lr))
    sched = CurriculumScheduler(cfg.steps, warmup=cfg.warmup, lr_base=cfg.lr, lr_coords=cfg.lr)
    n_val = min(cfg.eval_windows, (len(corpus["val"]) - 1) // cfg.seq_len)
    windows = corpus["val"][: n_val * cfg.seq_len + 1]
    history, seconds = [], 0.0
    for step in tqdm(range(cfg.steps), desc=f"scratch {kind}", disable=not progress, mininterval=5):
        t0 = time.perf_counter()
        rates = sched.learning_rates(step)
        if kind == "plain":
            for g in opt.param_groups:
                g["lr"] = rates["base"]
        else:
            set_learning_rates(opt, rates)
        x, y = random_windows(corpus["train"], cfg.batch_size, cfg.seq_len, cfg.seed, step)
        lm_loss, loss = _step(model, kind, x, y, sched, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seconds += time.perf_counter() - t0
        if (step + 1) % max(1, cfg.steps // 5) == 0 or step + 1 == cfg.steps:
            history.append(dict(step=step + 1, seconds=seconds, train_loss=lm_loss.item(),
                                val_loss=val_loss(model, kind, windows, cfg.seq_len), phase=sched.phase(step)))
    parts = model.parameter_breakdown() if kind != "plain" else dict(total=sum(p.numel() for p in model.parameters()))
    out = dict(kind=kind, history=history, val_loss=history[-1]["val_loss"], params=parts, seconds=seconds)
    save_checkpoint(run / "checkpoint", model, opt, cfg.steps, dict(config=cfg.seed_config(V), kind=kind,
                                                                     vocab=corpus["vocab"].tolist()))
    atomic_write_json(run / "result.json", out)
    artefacts.used(run, trained=True, seconds=seconds)
    return out


def scratch_dir(kind: str, cfg: ScratchConfig, vocab_size: int):
    return llgbm_home() / "coordinates" / "scratch" / f"{kind}-{config_hash(dict(cfg=asdict(cfg), V=vocab_size, v=1))}"


def load_trained(path) -> tuple:
    """(model, the corpus vocabulary as original token ids, its state) from a train_scratch checkpoint."""
    try:
        state = checkpoint_state(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no trained GeometricLlama at {path}: run notebook 12 or `python -m geomlib.coordinates train` first") from None
    lacking = sorted({"config", "kind", "vocab"} - set(state))
    if lacking:
        raise ValueError(f"{path} is not a GeometricLlama checkpoint from train_scratch: its state lacks {', '.join(lacking)}")
    model = GeometricLlama(state["config"], pooling="sequence" if state["kind"].startswith("leaky") else "causal",
                           modulated=state["kind"] != "plain", init="zero" if state["kind"].endswith("zero_init") else "seed")
    load_checkpoint(path, model)
    return model, torch.tensor(state["vocab"]), state


def scaling(corpus: dict, cfg: ScratchConfig) -> list[dict]:
    """Median seconds per training step (forward + backward + AdamW) of the causal GeometricLlama at each
    num_coordinates in cfg.scaling_coordinates, all timed in one call; with the parameter counts."""
    V, rows = len(corpus["vocab"]), []
    x, y = random_windows(corpus["train"], cfg.batch_size, cfg.seq_len, cfg.seed, 0)
    for C in cfg.scaling_coordinates:
        torch.manual_seed(0)
        model = build("geometric", cfg, V, num_coordinates=C)
        opt = make_optimizer(model, cfg.lr, cfg.lr)

        def step():
            loss = _step(model, "geometric", x, y, None, 0)[1]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        rows.append(dict(num_coordinates=C, seconds_per_step=median_time(step, repeats=cfg.scaling_repeats),
                         params=sum(p.numel() for p in model.parameters())))
    return rows


def scaling_exponent(rows: list[dict]) -> float:
    """Slope of log(seconds per step) against log(num_coordinates): 1 is linear, 0 flat."""
    c = np.log([r["num_coordinates"] for r in rows])
    t = np.log([r["seconds_per_step"] for r in rows])
    return float(np.polyfit(c, t, 1)[0])


def theta_map(run: dict, tasks: tuple[str, ...]):
    """(silhouette of the inferred θ by task family, by task; a 2-D PCA frame for the figure; the
    95th percentile of the family silhouette with shuffled labels, the reference "clusters" must beat)."""
    import pandas as pd
    from sklearn.decomposition import PCA

    X = np.asarray(run["theta_test"])
    task = [tasks[i] for i in run["theta_labels"]]
    family = [get_task(t).family for t in task]
    xy = PCA(2, random_state=0).fit_transform(X / np.linalg.norm(X, axis=1, keepdims=True))
    frame = pd.DataFrame(dict(pc1=xy[:, 0], pc2=xy[:, 1], task=task, family=family))
    several = len(set(family)) > 1
    fam = cosine_silhouette(X, family) if several else math.nan
    null = silhouette_null(X, family) if several else math.nan
    return fam, cosine_silhouette(X, task), frame, null


class CompactTokenizer:
    """A tokenizer over the corpus's compacted ids (pydoc_corpus relabels the token ids it uses)."""

    def __init__(self, tokenizer, vocab: torch.Tensor):
        self.tok, self.vocab = tokenizer, vocab
        self.index = {int(t): i for i, t in enumerate(vocab.tolist())}
        self.eos_token_id, self.pad_token_id = None, 0

    def __call__(self, text, add_special_tokens=False, return_tensors=None):
        ids = [self.index[t] for t in self.tok(text, add_special_tokens=False).input_ids]    # KeyError: unseen token
        enc = type("Encoding", (), {})()
        enc.input_ids = torch.tensor([ids]) if return_tensors == "pt" else ids
        return enc

    def decode(self, ids, skip_special_tokens=True):
        return self.tok.decode(self.vocab[torch.as_tensor(ids)].tolist(), skip_special_tokens=skip_special_tokens)


def scratch_table(scratch: dict[str, dict], bytes_per_token: float):
    import pandas as pd
    return pd.DataFrame({k: dict(val_loss=v["val_loss"], bits_per_byte=v["val_loss"] / math.log(2) / bytes_per_token,
                                 params=v["params"]["total"], seconds=v["seconds"]) for k, v in scratch.items()}).T


def scratch_figure(scratch: dict[str, dict], entropy: float):
    import pandas as pd
    import seaborn as sns
    hist = pd.DataFrame([dict(model=k, **h) for k, v in scratch.items() for h in v["history"]])
    ax = sns.lineplot(hist, x="step", y="val_loss", hue="model", marker="o")
    ax.axhline(entropy, color="k", ls=":", label="unigram entropy")
    ax.set(xlabel="training step", ylabel="validation loss (nats/token)", title="Does modulation help from scratch, and does the leak show?")
    ax.legend(fontsize=8)
    return ax.figure


def theta_figure(proj, silhouette_family: float):
    import seaborn as sns
    ax = sns.scatterplot(proj, x="pc1", y="pc2", hue="task", style="family", s=30)
    ax.set(xlabel="first principal component of θ/‖θ‖", ylabel="second principal component",
           title=f"Do tasks of one family share coordinates? (silhouette by family {silhouette_family:.2f})")
    ax.legend(fontsize=7)
    return ax.figure


def parameter_metrics(scratch: dict[str, dict]) -> dict[str, int]:
    """What the seed's "10M" config builds (counted on the meta device) and the two from-scratch models."""
    with torch.device("meta"):
        seed = GeometricLlama(SEED_CONFIG).parameter_breakdown()
    return dict(params_seed_config=seed["total"], params_seed_modulation=seed["modulation"],
                params_geometric_llama=scratch["geometric"]["params"]["total"], params_plain_llama=scratch["plain"]["params"]["total"])
