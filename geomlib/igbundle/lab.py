"""Notebook 10's harness: the protocol presets, equal-parameter configurations of the three methods,
cached runs with their per-item scores on the mixture's test items, base-model scores, and the
memory/speed runs (fp32 vs NF4 base) in fresh processes, so that each peak RSS is its own."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from llgbm.core import cache, models
from llgbm.core.stats import pooled
from llgbm.core.tasks import get_task
from llgbm.core.utils import check_profile, config_hash, llgbm_home, preset_config
from llgbm.eval import compare
from llgbm.eval.scoring import evaluate_task

from . import host
from .adapter import IGBundleConfig, NormalisedSheafLoss, SheafLoss, adapter_params, scaled
from .train import IGTrainConfig, load_base, train, unload


@dataclass
class IGLabConfig:
    eval_items: int = 64                     # test items per mixture task (8 tasks × 64 = 512)
    seeds: tuple[int, ...] = (0, 1, 2)
    lora_rank: int = 8                       # the parameter budget: LoRA r 8 on all 7 projections
    ablation_seeds: tuple[int, ...] = (0, 1, 2)   # the sheaf ablation's seeds (off and normalised; faithful is the main run)
    speed_steps: int = 4                     # steps of the fp32 / NF4 memory-and-speed runs (fresh processes)
    nf4_eval_items: int = 16                 # items per task for the NF4 quality check (NF4 matmuls are slow on CPU)

    @classmethod
    def preset(cls, profile: str, **overrides) -> "IGLabConfig":
        base = {"smoke": dict(eval_items=4, seeds=(0, 1), ablation_seeds=(0,), speed_steps=2, nf4_eval_items=2),
                "quick": dict(), "full": dict(eval_items=100, seeds=(0, 1, 2, 3, 4), nf4_eval_items=64)}[check_profile(profile)]
        return preset_config(cls, base, overrides)


def lora_params(model_config, rank: int) -> int:
    """Trainable parameters of LoRA rank `rank` on all 7 projections: r·(in + out) per linear."""
    h, f = model_config.hidden_size, model_config.intermediate_size
    head = getattr(model_config, "head_dim", None) or h // model_config.num_attention_heads
    q, kv = model_config.num_attention_heads * head, model_config.num_key_value_heads * head
    per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + f) + (f + h)
    return model_config.num_hidden_layers * rank * per_layer


def method_configs(base: IGTrainConfig, model_config, lora_rank: int) -> dict[str, IGTrainConfig]:
    """IGBundle (scaled), Houlsby and LoRA at equal trainable parameters (the LoRA's count). IGBundle
    keeps the seed's shape (P, K, D_lat = D_bot/2) with D_bot scaled; Houlsby's D_bot is chosen for the
    same count (so the two adapters' D_bot differ: equal parameters is the comparison that matters)."""
    budget = lora_params(model_config, lora_rank)
    n, h = model_config.num_hidden_layers, model_config.hidden_size
    ig = scaled(replace(base.ig, hidden_size=h), budget, n)
    houlsby_bot = max(1, round(budget / n / (2 * h + 1) - h / (2 * h + 1)))
    return {"igbundle": replace(base, method="igbundle", ig=ig),
            "houlsby": replace(base, method="houlsby", ig=replace(ig, bottleneck_dim=houlsby_bot, sheaf="off")),
            "lora": replace(base, method="lora", lora_rank=lora_rank)}


def mixture_scores(model, tokenizer, tasks: tuple[str, ...], n_items: int) -> dict[str, dict]:
    """{task: {correct, loglik}} on the first `n_items` test items of each mixture task."""
    out = {}
    for t in tasks:
        s = evaluate_task(model, tokenizer, get_task(t), n=n_items)
        out[t] = dict(correct=s.correct.astype(float), loglik=s.loglik)
    return out


def base_scores(model, tokenizer, cfg: IGTrainConfig, n_items: int) -> dict[str, dict]:
    key = config_hash(dict(model=models.model_fingerprint(cfg.model), tasks=cfg.tasks, n=n_items), 16)
    path = llgbm_home() / "igbundle" / f"base-{key}.json"
    return cache.arrays(cache.cached(path, lambda: mixture_scores(model, tokenizer, cfg.tasks, n_items)))


def run(cfg: IGTrainConfig, model, tokenizer, n_items: int, progress: bool = True) -> dict:
    """Train (cached) and score one configuration; the adapters are removed afterwards. Returns the
    per-item scores, trainable parameters, history and seconds per step."""
    res = train(cfg, model, tokenizer, progress=progress)
    try:
        path = res["run_dir"] / f"eval-{n_items}-{len(res['history']['loss'])}.json"
        scores = cache.arrays(cache.cached(path, lambda: mixture_scores(model, tokenizer, cfg.tasks, n_items)))
    finally:
        unload(model)
    h = res["history"]
    return dict(scores=scores, params=res["params"], history=h, seconds_per_step=float(np.median(h["seconds"])),
                run_dir=res["run_dir"], already_trained=res["resumed_from"] >= cfg.max_steps)


def nf4_scores(ckpt_run: Path, cfg: IGTrainConfig, n_items: int) -> dict[str, dict]:
    """The fp32-trained adapters of `ckpt_run` applied to an NF4 base: the quality cost of the 4-bit base."""
    path = ckpt_run / f"eval-nf4-{n_items}.json"
    def compute():
        model, tok = load_base(replace(cfg, load_in_4bit=True))
        last = max(ckpt_run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        meta = host.verify(last)
        host.load(model, last, meta["base_fingerprint"])
        model.eval()
        return mixture_scores(model, tok, cfg.tasks, n_items)
    return cache.arrays(cache.cached(path, compute))


def speed_run(cfg: IGTrainConfig, steps: int) -> dict:
    """Train `steps` steps in a fresh process (`python -m geomlib.igbundle train`) and return its
    report: seconds per step and the process's peak resident memory (MB)."""
    import yaml
    with tempfile.TemporaryDirectory() as tmp:
        conf = cfg.to_yaml()
        conf.pop("lora", None)                                   # the adapters alone, as this table has always timed them
        conf["ig_adapter"].pop("hidden_size", None)
        conf["training"].update(max_steps=steps, save_steps=steps)
        conf["training"].pop("output_dir", None)
        (Path(tmp) / "c.yaml").write_text(yaml.safe_dump(conf))
        cmd = [sys.executable, "-m", "geomlib.igbundle", "train", "--config", str(Path(tmp) / "c.yaml"),
               "--output-dir", str(Path(tmp) / "run"), "--report", str(Path(tmp) / "report.json")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"speed run failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
        return json.loads((Path(tmp) / "report.json").read_text())


def params_table(configs: dict[str, IGTrainConfig], model_config) -> dict[str, int]:
    """Trainable parameters of each configured method (computed; the runs report the built count)."""
    out = {}
    for m, c in configs.items():
        ig = replace(c.ig, hidden_size=model_config.hidden_size)
        if m == "lora":
            out[m] = lora_params(model_config, c.lora_rank)
        elif m == "igbundle":
            out[m] = model_config.num_hidden_layers * adapter_params(ig)
        else:
            out[m] = model_config.num_hidden_layers * (2 * ig.hidden_size * ig.d_bot + ig.d_bot + ig.hidden_size)
    return out


def sheaf_at_init(model, tokenizer, texts: list[str], latent_dim: int | None = None) -> dict[str, float]:
    """At the seed's defaults (D_lat 128, τ 1; or at `latent_dim`, e.g. the one notebook 10 trains), on
    the real model's states for `texts`: the faithful sheaf loss and the norm of its gradient (w.r.t.
    adapters and patch centres), the largest off-diagonal patch weight ω, and the normalised loss.
    The adapters are attached for the measurement and removed after."""
    import torch

    torch.manual_seed(0)
    cfg = IGBundleConfig(hidden_size=model.config.hidden_size, sheaf="faithful", dropout=0.0)
    if latent_dim is not None:
        cfg = replace(cfg, latent_dim=latent_dim)
    h = host.attach(model, cfg)
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        model(**batch)
        faithful = sum(h.sheaf(s) for s in h.states.values())
        faithful.backward()
        grads = [p.grad for p in h.parameters() if p.grad is not None]
        grad_norm = float(torch.sqrt(sum(g.square().sum() for g in grads))) if grads else 0.0
        normalised = NormalisedSheafLoss(8, h.cfg.latent_dim, h.cfg.num_categories)
        with torch.no_grad():
            value_n = float(sum(normalised(s) for s in h.states.values()))
        assert isinstance(h.sheaf, SheafLoss)
        return dict(faithful_value=float(faithful), faithful_grad_norm=grad_norm, normalised_value=value_n, latent_dim=h.cfg.latent_dim,
                    faithful_omega_max_offdiag=float((h.sheaf.omega() - torch.eye(8)).abs().max()))
    finally:
        host.detach(model)


def seed_params(model_config) -> int:
    """Trainable parameters of IGBundle at the seed's defaults on this model (ANCHORS: ≈ 25.6M on SmolLM2)."""
    return model_config.num_hidden_layers * adapter_params(IGBundleConfig(hidden_size=model_config.hidden_size))


def run_grid(configs: dict[str, IGTrainConfig], seeds, model, tokenizer, n_items: int, **changes) -> dict:
    """{(name, seed): run(...)} for every configuration and seed; `changes` (e.g. sheaf='off') are
    applied to the IGBundle config of each run."""
    from tqdm.auto import tqdm
    out = {}
    cells = [(name, s) for name in configs for s in seeds]
    for name, s in tqdm(cells, desc="runs"):
        c = replace(configs[name], seed=s, ig=replace(configs[name].ig, **changes))
        out[name, s] = run(c, model, tokenizer, n_items, progress=False)
    return out


def sigma_frame(history: dict):
    """Long form (step, layer, sigma) of a run's per-layer sigma log."""
    import pandas as pd
    return pd.DataFrame([dict(step=i + 1, layer=layer, sigma=v) for i, row in enumerate(history["sigma"])
                         for layer, v in enumerate(row)])


def first_items(scores: dict[str, dict], n: int) -> dict[str, dict]:
    """The same scores restricted to the first `n` items of each task."""
    return {t: {k: np.asarray(v)[:n] for k, v in d.items()} for t, d in scores.items()}


def paired_metrics(tests, pairs: dict[str, str]) -> dict[str, float]:
    """metrics.json entries `loglik_diff_<name>` and `acc_diff_<name>`, each with `_ci_low`/`_ci_high`
    (95% CIs over seeds and tasks), from a paired-tests table; `pairs` maps the metric name (e.g.
    'igbundle_vs_lora') to its row ('igbundle − lora')."""
    out = {}
    for name, row in pairs.items():
        out.update(compare.diff_metrics(tests.loc[row], f"{{k}}_diff_{name}"))
    return out


def memory_check(cfg: IGTrainConfig, fp32_run: dict, steps: int, nf4_items: int):
    """fp32 vs NF4 base for one IGBundle configuration: a `steps`-step speed run of each in a fresh
    process, and the fp32-trained adapter of `fp32_run` scored on an NF4 base against the same items on
    fp32. Returns (table, {fp32, nf4, acc_nf4, acc_fp32_same_items})."""
    import pandas as pd

    fp32, nf4 = speed_run(cfg, steps), speed_run(replace(cfg, load_in_4bit=True), steps)
    tasks = list(cfg.tasks)
    acc_nf4 = pooled(nf4_scores(fp32_run["run_dir"], cfg, nf4_items), "correct", tasks).mean()
    acc_fp32 = pooled(first_items(fp32_run["scores"], nf4_items), "correct", tasks).mean()
    table = pd.DataFrame({name: [r["peak_rss_mb"], r["peak_above_imports_mb"], r["seconds_per_step"], acc]
                          for name, r, acc in [("fp32 base", fp32, acc_fp32), ("NF4 base", nf4, acc_nf4)]},
                         index=["peak RSS (MB)", "peak above the imports (MB)", "s / step", f"exact match ({nf4_items} items/task)"])
    return table, dict(fp32=fp32, nf4=nf4, acc_nf4=float(acc_nf4), acc_fp32_same_items=float(acc_fp32))
