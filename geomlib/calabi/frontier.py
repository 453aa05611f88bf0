"""Issue 29's measurements of notebook 11's frontier (the lowest-perplexity method at 20%), cached as the
grid is (`lab.cached`): recovery by distillation as a curve over steps (`recovery_curve`, its model saved),
speed and resident memory of saved compressed models at every ratio (`speed_memory`), and exact match on
the lab's tasks (`task_table`), perplexity on a second corpus (`second_corpus`); `study` runs them for
the notebook."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from geomlib.calabi import recover, store, svd
from geomlib.calabi.lab import (CACHE_VERSION, CalabiConfig, cache_file, cached, cell_key, compressed, compressed_folder,
                                dense_reference, measure_key, save_whole)
from llgbm.core import artefacts, models
from llgbm.core.timing import machine
from llgbm.core.utils import config_hash, llgbm_home
from llgbm.eval import lm


def speed_memory(model_name: str, dense, stats, eval_ids: torch.Tensor, cfg: CalabiConfig, method: str) -> pd.DataFrame:
    """Dense against `method` at every ratio of the profile, each compressed model loaded back from its saved
    folder (`compressed_folder`): forward tokens/s, interleaved `speed_repeats` times on `speed_windows`
    windows (median, min, max, spread), and resident memory of a fresh process holding the model after one
    forward, and at its peak while loading, each less the same process without a model (`recover.rss_mb`).
    Cached per machine."""
    folders = {f"{method} {r:.0%}": compressed_folder(model_name, r, method, stats, cfg) for r in cfg.ratios}

    def measure() -> dict:
        loaded = {"dense": dense} | {k: store.load_compressed(f) for k, f in folders.items()}
        speed = lm.interleaved_speed(loaded, eval_ids[:cfg.speed_windows], cfg.speed_repeats)
        base = recover.rss_mb("-")
        rows = {}
        for name in loaded:
            rss = recover.rss_mb(f"preset:{model_name}" if name == "dense" else str(folders[name]))
            params = sum(p.numel() for p in loaded[name].parameters())
            rows[name] = dict(speed.loc[name], params=params, rss_after_mb=rss["after"] - base["after"],
                              rss_peak_mb=rss["peak"] - base["peak"])
        return rows
    key = dict(cell_key(model_name, cfg, method, 0.2), ratios=list(cfg.ratios), repeats=cfg.speed_repeats,
               windows=cfg.speed_windows, machine=machine(), forward=svd.FORWARD)
    return pd.DataFrame(cached("speed-memory", key, measure)).T


def recovery_curve(model_name: str, dense, method: str, ratio: float, stats, calib_ids: torch.Tensor, eval_ids: torch.Tensor,
                   cfg: CalabiConfig) -> pd.DataFrame:
    """Held-out perplexity of `method` at `ratio` after 0 … max(cfg.recover_steps) steps of distillation from
    the dense model (`recover.distill`, on calibration windows), at each of `cfg.recover_steps`; the
    distilled model is saved (`recovered_folder`) for the task table. Cached."""
    def run() -> list[dict]:
        model, _ = compressed(model_name, ratio, method, stats, cfg)
        rows = recover.distill(model, dense, calib_ids, cfg.recover_steps, lambda m: dict(ppl=lm.perplexity(m, eval_ids)[0]),
                               lr=cfg.recover_lr, batch=cfg.ft_batch)
        save_whole(model, folder, meta=dict(method=method, ratio=ratio, distilled_steps=max(cfg.recover_steps)))
        return rows
    key, folder = recovery_key(model_name, method, ratio, cfg), recovered_folder(model_name, method, ratio, cfg)
    if not (folder / "calabi.json").is_file():            # the curve without its model: run it again
        cache_file("recovery", key).unlink(missing_ok=True)
    trained, t0 = not cache_file("recovery", key).exists(), time.perf_counter()
    curve = pd.DataFrame(cached("recovery", key, run))
    artefacts.used(folder, trained=trained, seconds=time.perf_counter() - t0 if trained else None)
    return curve


def recovery_key(model_name: str, method: str, ratio: float, cfg: CalabiConfig) -> dict:
    return dict(cell_key(model_name, cfg, method, ratio), steps=list(cfg.recover_steps), lr=cfg.recover_lr, batch=cfg.ft_batch)


def recovered_folder(model_name: str, method: str, ratio: float, cfg: CalabiConfig) -> Path:
    """Where `recovery_curve` saves its distilled model."""
    return llgbm_home() / "calabi" / "models" / f"recovered-{config_hash(dict(recovery_key(model_name, method, ratio, cfg), v=CACHE_VERSION))}"


def task_table(model_name: str, dense, tok, named: dict, cfg: CalabiConfig) -> tuple[list[str], dict]:
    """({tasks}, {model name: 0/1 per test item}) for the dense model and each of `named` ({name: a saved
    compressed-model folder}): `cfg.task_count` tasks chosen on dev by the dense model among `cfg.task_candidates`
    (`recover.pick_tasks`), `cfg.task_items` test items each, `cfg.shots`-shot prompts. Cached per model."""
    pick_key = dict(model=models.model_fingerprint(model_name), candidates=list(cfg.task_candidates), k=cfg.task_count,
                    dev=cfg.task_dev_items, n=cfg.task_items, shots=cfg.shots)
    names = cached("task-pick", pick_key, lambda: dict(tasks=recover.pick_tasks(
        dense, tok, list(cfg.task_candidates), cfg.task_count, cfg.task_dev_items, cfg.task_items, cfg.shots)))["tasks"]
    scores = {}
    for name, folder in {"dense": None, **named}.items():
        key = dict(pick_key, tasks=names, folder=None if folder is None else folder.name)
        scores[name] = cached("tasks", key, lambda f=folder: dict(em=recover.exact_match(
            dense if f is None else store.load_compressed(f), tok, names, cfg.task_items, cfg.shots).tolist()))["em"]
    return names, {k: np.array(v) for k, v in scores.items()}


def study(model_name: str, dense, tok, stats, calib_ids: torch.Tensor, eval_ids: torch.Tensor, cfg: CalabiConfig,
          front, best) -> dict:
    """Issue 29's measurements of the frontier cell `front` (a grid row at 20%), beside the best uniform one
    `best`: {curve: `recovery_curve`, sm: `speed_memory`, names and em: `task_table` of dense, the frontier
    before and after recovery and `best`, recovered: the recovered model's name in em, corpora:
    `second_corpus` of the same models}."""
    curve = recovery_curve(model_name, dense, front.method, front.ratio, stats, calib_ids, eval_ids, cfg)
    sm = speed_memory(model_name, dense, stats, eval_ids, cfg, front.method)
    recovered = f"{front.method} {front.ratio:.0%} recovered"
    named = {f"{front.method} {front.ratio:.0%}": compressed_folder(model_name, front.ratio, front.method, stats, cfg),
             recovered: recovered_folder(model_name, front.method, front.ratio, cfg),
             f"{best.method} {best.ratio:.0%}": compressed_folder(model_name, best.ratio, best.method, stats, cfg)}
    names, em = task_table(model_name, dense, tok, named, cfg)
    ppl = {"dense": dense_reference(model_name, dense, eval_ids, cfg)[0], f"{front.method} {front.ratio:.0%}": float(front.ppl),
           recovered: float(curve.ppl.iloc[-1]), f"{best.method} {best.ratio:.0%}": float(best.ppl)}
    corpora = second_corpus(model_name, dense, tok, named, cfg, ppl)
    return dict(curve=curve, sm=sm, names=names, em=em, recovered=recovered, corpora=corpora)


def second_corpus(model_name: str, dense, tok, named: dict, cfg: CalabiConfig, pydoc_ppl: dict) -> pd.DataFrame:
    """Held-out perplexity of dense and of each `named` folder on the pydoc topics (`pydoc_ppl`, measured
    before) and on a second corpus, the standard library's module docstrings (`lm.docstring_windows`,
    `eval_windows` windows), with both as ratios to dense. Cached per model."""
    ids = lm.docstring_windows(tok, cfg.eval_windows, cfg.window)
    rows = {}
    for name, folder in {"dense": None, **named}.items():
        key = dict(measure_key(model_name, cfg), corpus="stdlib docstrings", folder=None if folder is None else folder.name)
        row = cached("corpus", key, lambda f=folder: dict(ppl=lm.perplexity(dense if f is None else store.load_compressed(f), ids)[0]))
        rows[name] = dict(pydoc_topics=pydoc_ppl[name], stdlib_docstrings=row["ppl"])
    out = pd.DataFrame(rows).T
    return out.assign(**{f"{c}_ratio": out[c] / out.loc["dense", c] for c in ("pydoc_topics", "stdlib_docstrings")})
