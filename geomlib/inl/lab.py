"""Notebook 13's harness: pydoc text in one tokenizer, an INL model and its size-matched transformer
trained on the same token windows (cached, resumable), validation loss against FLOPs and wall time,
and the speed protocol: decoding tokens/s with a KV cache at fixed K, adaptive stopping and a
smaller fixed K, beside the FLOP ratio and the measured ceiling of what stopping early can buy."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from llgbm.core import artefacts, cache, checkpoint
from llgbm.core.utils import check_profile, config_hash, llgbm_home, preset_config, seed_everything, warmup_lr
from llgbm.eval.lm import random_windows

from .loss import IntegratorLoss, create_cycle_scheduler
from .model import INLConfig, IntegratorLanguageModel, size_config, transformer_like
from .store import CHECKPOINT, run_folder, save_run
from .tables import final_table, history_frame, iteration_frame, parts_table  # noqa: F401  (the notebook's lab.<table>)


@dataclass(frozen=True)
class INLLabConfig:
    size: str = "cpu-small"
    tokenizer: str = "smollm2"     # SmolLM2's BPE, ids compacted to the tokens the corpus uses
    seq_len: int = 128
    batch_size: int = 8
    steps: int = 300
    lr: float = 3e-3               # AdamW, linear warmup then cosine to 10%; every model alike
    warmup: int = 20
    weight_decay: float = 0.01
    clip: float = 1.0
    dropout: float = 0.0           # the seed's default is 0.1; a short from-scratch run uses none (as nanoGPT)
    embedding_init: str = "scaled" # see INLConfig.embedding_init: with the seed's, no model here gets past unigram
    loss_preset: str = "readme"    # IntegratorLoss for the INL model (the transformer: cross-entropy)
    scheduler: str = "equilibrium"
    eval_every: int = 50
    eval_windows: int = 48
    seed: int = 0                  # the seed of every run; the headline pair (INL, transformer) also trains `seeds`
    seeds: tuple[int, ...] = (0, 1, 2)
    bench_prompt: int = 32
    bench_new_tokens: int = 64
    bench_repeats: int = 7
    small_k: int = 3               # the simplest honest alternative to adaptive stopping: a smaller fixed K
    memory_steps: int = 3
    determinism_steps: int = 4

    @classmethod
    def preset(cls, profile: str, **overrides) -> "INLLabConfig":
        base = {"smoke": dict(size="cpu-tiny", tokenizer="tiny", seq_len=32, batch_size=4, steps=8, warmup=2, eval_every=4,
                              eval_windows=4, bench_prompt=8, bench_new_tokens=4, bench_repeats=1, memory_steps=2,
                              determinism_steps=2, seeds=(0, 1)),
                "quick": {}, "full": dict(steps=1500, eval_windows=96, bench_repeats=5)}[check_profile(profile)]
        return preset_config(cls, base, overrides)


def val_windows(corpus: dict, cfg: INLLabConfig) -> torch.Tensor:
    n = min(cfg.eval_windows, (len(corpus["val"]) - 1) // cfg.seq_len)
    return corpus["val"][: n * cfg.seq_len + 1]


def flops_per_token(cfg: INLConfig, seq_len: int, iterations: float | None = None) -> dict[str, float]:
    """Forward FLOPs per token by part (matmuls only; 2 per multiply-add): attention projections and
    scores (a causal window averages seq_len/2 keys), FFN, the relaxation's controller per iteration,
    embedding up-projection and head."""
    d, L = cfg.d_model, cfg.num_layers
    k = cfg.num_iterations if iterations is None else iterations
    out = {"attention": L * (2 * 4 * d * d + 2 * 2 * d * seq_len / 2), "ffn": L * 2 * 2 * d * cfg.ff_dim,
           "relaxation": L * k * 2 * (3 * d * 64 + 64 * 3 * d) if cfg.relax else 0.0,
           "head": 2 * d * cfg.vocab_size + (2 * cfg.embedding_rank * d if cfg.lowrank_embeddings else 0)}
    out["total"] = sum(out.values())
    return out


@torch.no_grad()
def evaluate(model: IntegratorLanguageModel, windows: torch.Tensor, seq_len: int, **forward_kw) -> dict:
    """Mean next-token cross-entropy (nats) over the validation windows, in eval mode, and the
    iteration count of every token at every layer (layers, tokens)."""
    was = model.training
    model.eval()
    x = windows[:-1].view(-1, seq_len)
    y = windows[1:].view(-1, seq_len)
    nll, iters = 0.0, []
    for i in range(0, len(x), 8):
        logits, _ = model(x[i:i + 8], **forward_kw)
        nll += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y[i:i + 8].flatten(), reduction="sum").item()
        if model.iterations:
            iters.append(torch.stack([it.flatten() for it in model.iterations]))
    model.train(was)
    return dict(loss=nll / y.numel(), iterations=torch.cat(iters, 1) if iters else None)


def train_lm(model_cfg: INLConfig, corpus: dict, cfg: INLLabConfig, tag: str, stop_after: int | None = None,
             save: bool = True, progress: bool = True) -> dict:
    """Train from scratch (or resume the cached run) for cfg.steps on the shared windows. The INL model
    (relax=True) trains with IntegratorLoss (the seed's objective, its trajectory terms averaged over
    layers) under the seed's cycle scheduler, an epoch being one pass over the training tokens; the
    transformer with cross-entropy. `stop_after` ends early (the schedule is still cfg.steps long, so a
    later call resumes exactly). Returns {model, history, seconds, run_dir, resumed_from}."""
    from tqdm.auto import tqdm
    steps = cfg.steps
    run = run_folder(model_cfg, cfg, tag)
    seed_everything(cfg.seed)
    model = IntegratorLanguageModel(model_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    params = list(model.parameters())
    history, start, seconds = [], 0, 0.0
    if save and ((run / CHECKPOINT).exists() or (run / "state.json").exists()):
        state = (checkpoint.load(run / CHECKPOINT, model=model, opt=opt, params=params)[1] if (run / CHECKPOINT).exists()
                 else checkpoint.load_legacy_folder(run, model=model, opt=opt, params=params)[1])   # the layout before it
        history, start, seconds = state["history"], state["step"], state["seconds"]
    resumed_seconds = seconds
    loss_fn = IntegratorLoss.preset(cfg.loss_preset, task_loss_type="ce", variance_weighted=True)
    sched = create_cycle_scheduler(cfg.scheduler)
    windows, tokens_per_epoch = val_windows(corpus, cfg), len(corpus["train"])
    fpt = 3 * flops_per_token(model_cfg, cfg.seq_len)["total"]
    model.train()
    bar = tqdm(range(start, min(steps, stop_after or steps)), desc=f"train {tag}", disable=not progress or start >= steps, mininterval=5)
    for step in bar:
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 7919 + step)            # dropout: the same masks after a resume
        for group in opt.param_groups:
            group["lr"] = warmup_lr(cfg.lr, step, cfg.warmup) * (0.55 + 0.45 * math.cos(math.pi * step / steps))
        x, y = random_windows(corpus["train"], cfg.batch_size, cfg.seq_len, cfg.seed, step)
        logits, aux = model(x, return_aux=model_cfg.relax)
        if model_cfg.relax:
            epoch = step * cfg.batch_size * cfg.seq_len // tokens_per_epoch
            loss_fn.set_exploration_phase(sched.step(epoch)["is_exploration"])
            parts = [loss_fn(logits.flatten(0, 1), y.flatten(), trajectory=a, epoch=epoch) for a in aux]
            loss = parts[0]["L_task"] + sum(p["total"] - p["L_task"] for p in parts) / len(parts)
        else:
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        seconds += time.perf_counter() - t0
        done = step + 1
        if done % cfg.eval_every == 0 or done in (steps, stop_after):
            ev = evaluate(model, windows, cfg.seq_len, early_stop=None)
            history.append(dict(step=done, tokens=done * cfg.batch_size * cfg.seq_len, train_flops=done * cfg.batch_size * cfg.seq_len * fpt,
                                seconds=seconds, train_loss=loss.item(), val_loss=ev["loss"]))
            bar.set_postfix(val=f"{ev['loss']:.3f}")
            if save:
                save_run(run, model, opt, params, dict(step=done, seconds=seconds, history=history, config=asdict(model_cfg)))
    if save:
        end = max(start, min(steps, stop_after or steps))
        artefacts.used(run, trained=start < end, seconds=seconds - resumed_seconds, steps=(start, end))
    return dict(model=model.eval(), history=history, seconds=seconds, run_dir=run, resumed_from=start)


def decode_speeds(model: IntegratorLanguageModel, prompts: torch.Tensor, new_tokens: int, repeats: int,
                  modes: dict[str, dict]) -> dict[str, float]:
    """Greedy decoding tokens/s (new tokens over all rows, KV cache) of every mode: the modes take turns
    within each repeat (so a drift of the machine's speed hits them all alike), median of `repeats`
    after one untimed warm-up round."""
    times = {name: [] for name in modes}
    for r in range(repeats + 1):
        for name, kw in modes.items():
            t0 = time.perf_counter()
            model.generate(prompts, new_tokens, do_sample=False, **kw)
            if r:
                times[name].append(time.perf_counter() - t0)
    return {name: prompts.shape[0] * new_tokens / float(np.median(ts)) for name, ts in times.items()}


@torch.no_grad()
def step_norms(model: IntegratorLanguageModel, windows: torch.Tensor, seq_len: int, n_windows: int = 8) -> torch.Tensor:
    """‖Δx‖ of every token's relaxation step at every iteration, all K run: (layers, tokens, K)."""
    was = model.training
    model.eval()
    x = windows[:-1].view(-1, seq_len)[:n_windows]
    _, aux = model(x, return_aux=True, early_stop=None)
    model.train(was)
    return torch.stack([(a["x"][:, 1:] - a["x"][:, :-1]).norm(dim=-1) for a in aux])


def mode_table(model: IntegratorLanguageModel, corpus: dict, cfg: INLLabConfig):
    """Fixed K, the seed's batch-level stop, our per-token stop (at the seed's tol and at a tol
    calibrated so that half the tokens' steps at the first check fall below it), a smaller fixed K,
    and fixed K at adaptive stopping's minimum (its measured ceiling), all on one trained INL model
    and timed in this one call: validation loss, iterations, tokens/s at batch 1 and 8, speed-ups,
    the FLOP ratio K / iterations used (matmul FLOPs only) and whether the speed-up stays within it
    (per-iteration overheads that are not FLOPs can beat it). Returns (table,
    {mode: iteration counts (layers, tokens)}, the calibrated tol)."""
    import pandas as pd
    K, m = model.cfg.num_iterations, model.cfg.min_iterations
    windows = val_windows(corpus, cfg)
    tol_cal = float(step_norms(model, windows, cfg.seq_len)[..., min(m, K - 1)].median())
    prompts = corpus["val"][: 8 * cfg.bench_prompt].view(8, cfg.bench_prompt)
    modes = {f"fixed K={K}": dict(early_stop=None), "adaptive (batch, the seed's)": dict(early_stop="batch"),
             "adaptive (per token)": dict(early_stop="token"),
             "adaptive (per token, calibrated tol)": dict(early_stop="token", tol=tol_cal),
             f"fixed K={cfg.small_k}": dict(early_stop=None, num_iterations=cfg.small_k),
             # every token stopping at the first check, with no check to pay for: the measured ceiling of adaptive stopping
             f"fixed K={m + 1} (adaptive's minimum)": dict(early_stop=None, num_iterations=m + 1)}
    speed = {b: decode_speeds(model, p, cfg.bench_new_tokens, cfg.bench_repeats, modes)
             for b, p in (("b1", prompts[:1]), ("b8", prompts))}
    rows, iters = [], {}
    for name, kw in modes.items():
        ev = evaluate(model, windows, cfg.seq_len, **kw)
        iters[name] = ev["iterations"]
        it = float(ev["iterations"].float().mean())
        rows.append(dict(mode=name, val_loss=ev["loss"], mean_iterations=it, max_iterations=int(ev["iterations"].max()),
                         tokens_per_s_b1=speed["b1"][name], tokens_per_s_b8=speed["b8"][name],
                         flop_ratio=speedup_ceiling(model.cfg, cfg.seq_len, it)["ceiling"]))
    table = pd.DataFrame(rows).set_index("mode")
    for b in ("b1", "b8"):
        table[f"speed-up {b}"] = table[f"tokens_per_s_{b}"] / table[f"tokens_per_s_{b}"].iloc[0]
        table[f"within FLOP ratio {b}"] = table[f"speed-up {b}"] <= table.flop_ratio
    table["Δ val loss vs fixed K"] = table.val_loss - table.val_loss.iloc[0]
    return table, iters, tol_cal


def cached_mode_table(run: dict, corpus: dict, cfg: INLLabConfig):
    """`mode_table` of a trained run (`train_lm`'s dict), timed once and kept in its run folder under
    the trained step and the benchmark settings (a run trained further, or other settings, is timed
    again)."""
    import pandas as pd
    key = dict(step=run["history"][-1]["step"] if run["history"] else 0, bench=asdict(cfg), v=2)

    def measure() -> dict:
        table, iters, tol = mode_table(run["model"], corpus, cfg)
        return dict(table=table.reset_index().to_dict("records"), tol=tol, iters={m: t.tolist() for m, t in iters.items()})

    saved = cache.cached(Path(run["run_dir"]) / f"modes-{config_hash(key)}.json", measure)
    return (pd.DataFrame(saved["table"]).set_index("mode"), {m: torch.tensor(t) for m, t in saved["iters"].items()},
            saved["tol"])


def speedup_ceiling(model_cfg: INLConfig, seq_len: int, iterations: float) -> dict[str, float]:
    """What stopping at `iterations` instead of K can buy at most: forward FLOPs at K over FLOPs at
    `iterations`, with everything else unchanged; and the share of FLOPs the K iterations take."""
    full, cut = flops_per_token(model_cfg, seq_len), flops_per_token(model_cfg, seq_len, iterations)
    return dict(ceiling=full["total"] / cut["total"], iteration_share=full["relaxation"] / full["total"])


def deterministic(model_cfg: INLConfig, corpus: dict, cfg: INLLabConfig) -> bool:
    """Two trainings with the same seed give bit-identical weights."""
    runs = [train_lm(model_cfg, corpus, cfg, "determinism", stop_after=cfg.determinism_steps, save=False,
                     progress=False)
            for _ in range(2)]
    a, b = (r["model"].state_dict() for r in runs)
    return all(torch.equal(a[k], b[k]) for k in a)


def memory_run(model_cfg: INLConfig, cfg: INLLabConfig, steps: int) -> dict:
    """Peak resident memory of `steps` training steps in a fresh process (`python -m geomlib.inl train`)."""
    import subprocess
    import sys
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "model.json").write_text(json.dumps(asdict(model_cfg)))
        (Path(tmp) / "lab.json").write_text(json.dumps(asdict(cfg)))
        cmd = [sys.executable, "-m", "geomlib.inl", "train", "--model-config", f"{tmp}/model.json", "--lab-config",
               f"{tmp}/lab.json", "--steps", str(steps), "--no-save", "--report", f"{tmp}/report.json"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"memory run failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
        return json.loads((Path(tmp) / "report.json").read_text())


def trained_dir(cfg: INLLabConfig, vocab_size: int) -> Path:
    """The run folder of the profile's INL model (what `python -m geomlib.inl generate` and `bench` load)."""
    return run_folder(models_for(cfg, vocab_size)["inl"], cfg, "inl")


def models_for(cfg: INLLabConfig, vocab_size: int) -> dict[str, INLConfig]:
    """The INL model as create_model builds it (low-rank embeddings), the standard transformer with
    its parameter count, that transformer with a full embedding (the embedding ablation: the
    factorisation does not touch the relaxation, and the transformer trains 2× faster here), and that
    transformer with the seed's embedding initialisation (what the init change is for)."""
    inl = size_config(cfg.size, vocab_size, dropout=cfg.dropout, embedding_init=cfg.embedding_init)
    tf = transformer_like(inl)
    return {"inl": inl, "transformer": tf, "transformer_full_embedding": replace(tf, lowrank_embeddings=False),
            "transformer_seed_init": replace(tf, embedding_init="seed")}


HEADLINE = ("inl", "transformer")


def seed_table(configs: dict[str, INLConfig], corpus: dict, cfg: INLLabConfig, runs: dict[str, dict]):
    """Final validation loss and training seconds of the headline pair (INL, transformer) at every seed
    of `cfg.seeds` (the runs of `cfg.seed` are `runs`', the others are trained and cached here): one
    row per (model, seed)."""
    import pandas as pd
    rows = []
    for name in HEADLINE:
        for s in cfg.seeds:
            r = runs[name] if s == cfg.seed else train_lm(configs[name], corpus, replace(cfg, seed=s), name, progress=False)
            rows.append(dict(model=name, seed=s, val_loss=r["history"][-1]["val_loss"], seconds=r["seconds"]))
    return pd.DataFrame(rows)


def embedding_ratio(cfg: INLConfig) -> float:
    """Low-rank embedding parameters over a full embedding's (V·r + r·d) / (V·d)."""
    return (cfg.vocab_size * cfg.embedding_rank + cfg.embedding_rank * cfg.d_model) / (cfg.vocab_size * cfg.d_model)


def embedding_to_position_ratio(cfg: INLConfig) -> dict[str, float]:
    """Mean norm of the token embeddings (as added to the positions) over the mean norm of the sinusoidal
    positions, at initialisation, under the seed's init and the scaled one."""
    out = {}
    for init in ("seed", "scaled"):
        torch.manual_seed(0)
        m = IntegratorLanguageModel(replace(cfg, embedding_init=init))
        with torch.no_grad():
            tok = m.token_embedding(torch.arange(cfg.vocab_size)) * m.embed_scale
        out[init] = float(tok.norm(dim=-1).mean() / m.pe[:512].norm(dim=-1).mean())
    return out



def memory_runs(configs: dict[str, INLConfig], cfg: INLLabConfig, refresh: bool = False):
    """Training-memory runs (fresh processes) of the INL model, the transformer and the INL model with
    gradient checkpointing: ({name: report}, the table). Each is measured once and cached; `refresh`
    measures again."""
    import pandas as pd
    models = {"inl": configs["inl"], "transformer": configs["transformer"],
              "inl + checkpointing": replace(configs["inl"], gradient_checkpointing=True)}
    mem = {name: cache.cached(llgbm_home() / "inl" / f"memory-{config_hash(dict(model=asdict(c), lab=asdict(cfg), v=1))}.json",
                             lambda c=c: memory_run(c, cfg, cfg.memory_steps), refresh)     # once per model and settings
           for name, c in models.items()}
    return mem, pd.DataFrame(mem).T[["params", "peak_above_start_mb", "peak_rss_mb", "seconds_per_step"]]

