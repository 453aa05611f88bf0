"""Generation and zero-shot evaluation: a trained generator turns a task's unlabeled prompts into
LoRA weights (DnD tokens -> a peft state dict -> a standard peft adapter folder), and those weights
are scored on tasks the generator never saw. The user's command on top of it is `llgbm.generate`."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from llgbm.core import cache
from llgbm.core.lora import save_adapter
from llgbm.core.stats import cosine
from llgbm.core.tasks import get_task
from llgbm.core.utils import hash_bytes
from llgbm.eval.scoring import evaluate_adapters
from llgbm.generator.network import HyperConvGenerator, encode_prompts
from llgbm.generator.tokenizer import LoRATokenizer2D


def generation_condition(encoder, prompts: list[str], n_prompts: int, prompt_tokens: int) -> torch.Tensor:
    """The generator's input for one task: its first `n_prompts` prompts encoded by MiniLM,
    (n_prompts, prompt_tokens, 384); too few prompts are repeated (DnD conditions on a fixed count)."""
    if not prompts:
        raise ValueError("no prompts to condition the generator on: pass at least one prompt")
    encoded = encode_prompts(encoder, prompts[:n_prompts], prompt_tokens)
    return encoded[torch.arange(n_prompts) % len(encoded)] if len(encoded) < n_prompts else encoded


@torch.no_grad()
def generate_tokens(gen: HyperConvGenerator, encoder, prompts: list[str], encoded: torch.Tensor | None = None) -> torch.Tensor:
    """Prompts -> generated DnD tokens (n_tokens, r + 2, chunk), conditioned on the first n_prompts
    (`encoded`: their `generation_condition`, when it is already computed)."""
    if encoded is None:
        encoded = generation_condition(encoder, prompts, gen.cfg.n_prompts, gen.cfg.prompt_tokens)
    return gen.eval()(encoded[None])[0]


@torch.no_grad()
def generate_adapter(gen: HyperConvGenerator, encoder, lora_tokenizer: LoRATokenizer2D, lora_config,
                     prompts: list[str], out_dir: Path | str) -> tuple[Path, float]:
    """Prompts -> a peft adapter folder (loads with PeftModel.from_pretrained); returns it and the seconds
    it took end to end (encoding, generation, detokenisation, writing)."""
    t0 = time.perf_counter()
    state = lora_tokenizer.detokenize(generate_tokens(gen, encoder, prompts))
    out = save_adapter(state, lora_config, out_dir)
    return out, time.perf_counter() - t0


def evaluate(result, encoder, model, tokenizer, lora_tokenizer: LoRATokenizer2D, lora_config,
             task_names: list[str], n_items: int, supervision=None,
             teacher_deltas: dict[str, np.ndarray] | None = None, progress: bool = True,
             condition=None, loglik_only: bool = False) -> dict[str, dict]:
    """Score a trained generator (a `training.TrainResult`) on tasks it never saw, from each task's
    unlabeled train prompts (or `condition(task)`: the texts to condition on, e.g. demonstrations).

    Per task: `correct` and `loglik` per test item (the first `n_items`; `loglik_only` skips greedy
    decoding and leaves `correct` NaN), cached in the run folder; and, with `supervision` and
    `teacher_deltas` ({task: (k, hidden) deltas of its zoo checkpoints}), `delta` (the generated Δ) and
    `delta_cos` (its cosine with each teacher checkpoint's Δ), which cost one probe forward per task
    and are recomputed every time."""
    return evaluate_many([result], encoder, model, tokenizer, lora_tokenizer, lora_config, task_names, n_items,
                         supervision, teacher_deltas, progress, condition, loglik_only)[0]


def _eval_cache(result, texts: dict[str, list[str]], task_names: list[str], n_items: int, loglik_only: bool,
                n_dev: int = 0, prefixes: dict[str, str] | None = None) -> Path | None:
    key = dict(tasks=list(task_names), n=n_items, step=len(result.history.get("loss", [])))
    if n_dev:
        key["n_dev"] = n_dev
    if prefixes:
        key["prefix"] = hash_bytes(json.dumps(prefixes, sort_keys=True).encode())[:16]
    if loglik_only:
        key["loglik_only"] = True
    if any(texts[t] != get_task(t).prompts("train") for t in task_names):
        key["condition"] = hash_bytes(json.dumps(texts, sort_keys=True).encode())[:16]
    key = hash_bytes(json.dumps(key).encode())[:12]
    return result.run_dir / f"eval_{key}.json" if result.run_dir is not None else None


def _delta_cache(eval_cache: Path | None, supervision) -> Path | None:
    if eval_cache is None or supervision is None:
        return None
    return eval_cache.with_name(f"delta_{eval_cache.stem.removeprefix('eval_')}_{supervision.key}.json")


def evaluate_many(results: list, encoder, model, tokenizer, lora_tokenizer: LoRATokenizer2D, lora_config,
                  task_names: list[str], n_items: int, supervision=None,
                  teacher_deltas: dict[str, np.ndarray] | None = None, progress: bool = True,
                  condition=None, loglik_only: bool = False, n_dev: int = 0, prefix=None) -> list[dict[str, dict]]:
    """`evaluate` for several generator runs (seeds, checkpoints along a run) on the same items: the
    runs not yet scored are scored together, their adapters in shared forwards
    (`scoring.evaluate_adapters`); each run's scores are cached in its own folder as `evaluate`
    caches them, so a run scored alone or with others reads the same cache. The generated Δ is cached
    beside them (keyed by the supervision's probes and base activation) and its cosines with the
    teacher deltas recomputed; a run with everything cached runs neither MiniLM nor the generator.
    `n_dev` dev items follow each task's `n_items` test items (`Task.items`). `prefix(task)` is text
    before every test prompt (a few-shot prompt: the generated adapter *and* the demonstrations).
    While it runs, each task's scores are kept beside the cache (`.partial`): an interrupted
    evaluation resumes at the first task it had not scored."""
    condition = condition or (lambda task: task.prompts("train"))
    texts = {name: condition(get_task(name)) for name in task_names}
    with_delta = supervision is not None and teacher_deltas is not None
    prefixes = {name: prefix(get_task(name)) for name in task_names} if prefix is not None else None
    caches = [_eval_cache(r, texts, task_names, n_items, loglik_only, n_dev, prefixes) for r in results]
    delta_caches = [_delta_cache(c, supervision) if with_delta else None for c in caches]
    saved = [_read(c, float) for c in caches]
    deltas = [_read(c, np.float32) if with_delta else None for c in delta_caches]
    todo = [i for i, s in enumerate(saved) if s is None]
    partial = {i: _read(_partial(caches[i]), float) or {} for i in todo}     # tasks an interrupted run scored
    need_tokens = [i for i in range(len(results)) if saved[i] is None or (with_delta and deltas[i] is None)]
    outs: list[dict] = [{} for _ in results]
    new_deltas: dict[int, dict] = {i: {} for i in range(len(results)) if with_delta and deltas[i] is None}
    encoded: dict[tuple, torch.Tensor] = {}
    for name in tqdm(task_names, desc="evaluate", disable=not progress, leave=False):
        task = get_task(name)
        tokens = {}
        for i in need_tokens:
            g = results[i].generator.cfg
            key = (name, g.n_prompts, g.prompt_tokens)
            if key not in encoded:      # MiniLM once per task, whatever the number of runs
                encoded[key] = generation_condition(encoder, texts[name], g.n_prompts, g.prompt_tokens)
            tokens[i] = generate_tokens(results[i].generator, encoder, texts[name], encoded[key])
        if todo and all(name in partial[i] for i in todo):
            for i in todo:
                outs[i][name] = dict(partial[i][name])
        elif todo:
            scores = evaluate_adapters(model, tokenizer, task, [lora_tokenizer.detokenize(tokens[i]) for i in todo],
                                       n=n_items, lora_config=lora_config, loglik_only=loglik_only, n_dev=n_dev,
                                       prefix=prefixes[name] if prefixes else "")
            for i, s in zip(todo, scores):
                outs[i][name] = dict(correct=s.correct.astype(float), loglik=s.loglik)
                if caches[i] is not None:          # kept task by task: an interruption loses one task's scoring
                    cache.write(_partial(caches[i]), {t: {k: np.asarray(d[k], dtype=float) for k in ("correct", "loglik")}
                                                      for t, d in outs[i].items()})
        for i, s in enumerate(saved):
            if s is not None:
                outs[i][name] = dict(s[name])
            if with_delta:
                if i in new_deltas:
                    with torch.no_grad():
                        new_deltas[i][name] = supervision(tokens[i][None])[0].numpy()
                d = new_deltas[i][name] if i in new_deltas else deltas[i][name]
                outs[i][name]["delta"], outs[i][name]["delta_cos"] = d, cosine(d, teacher_deltas[name])
    for i in todo:
        if caches[i] is not None:
            cache.write(caches[i], {t: {k: np.asarray(d[k], dtype=float) for k in ("correct", "loglik")} for t, d in outs[i].items()})
            _partial(caches[i]).unlink(missing_ok=True)
    for i, d in new_deltas.items():
        if delta_caches[i] is not None:
            cache.write(delta_caches[i], {t: np.asarray(v, dtype=float) for t, v in d.items()})
    return outs


def _partial(path: Path | None) -> Path | None:
    """Where an unfinished evaluation keeps the tasks it has scored (beside its cache file)."""
    return None if path is None else Path(path).with_name(Path(path).name + ".partial")


def _read(path: Path | None, dtype) -> dict | None:
    """A cached {task: {key: values}} (scores) or {task: values} (deltas), or None."""
    saved = cache.read(path)
    return None if saved is None else cache.arrays(saved, dtype)
