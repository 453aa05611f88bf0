"""Notebook 12's LoRA runs trained together: sequential, joint and replay LoRA of every seed share the
frozen base model, so each step runs all of them in one forward/backward (issue 30: runs that share a
base train together) and each evaluation scores all their adapters in shared forwards.

- **One forward, K runs.** The runs' LoRA factors are stacked leaf tensors (K, r, in) / (K, out, r);
  `FunctionalLoRA`'s hooks apply run k to the k-th group of rows. Each step every run draws the batch
  its solo run draws (`continual._items`, the same generator per (seed, stage)); run k's loss is the
  mean over its own answer tokens and the step minimises their sum, so no run's gradient depends on
  another's LoRA. Gradients are clipped per run (the solo run's `clip_grad_norm_` over its own
  factors); AdamW is elementwise, so one optimizer over the stacked factors is K independent ones.
- **The same runs.** Stage 1 is the solo runs' shared first stage (`continual._shared_first_stage`,
  cached per seed); later stages start from it. Only the float summation order differs from the solo
  runs (tested: the factors after a packed stage equal the solo stage's within float tolerance), so
  the results are cached under their own names (`<method>-seed<s>-packed.json`) beside the solo runs'.
- The coordinate methods modulate the base model's weights per run and keep training alone
  (`continual.run_method`)."""
from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import torch
from peft import get_peft_model

from llgbm.core import artefacts
from llgbm.core.functional import FunctionalLoRA
from llgbm.core.lora import stack_states
from llgbm.core.tasks import get_task
from llgbm.core.utils import atomic_write_json, check_known, warmup_lr
from llgbm.eval.scoring import build_batch, greedy_answers, target_logprobs

from . import continual
from .continual import CLConfig

LORA_METHODS = ("seq_lora", "joint_lora", "replay")


def run_all(model, tok, cfg: CLConfig, methods=continual.TRAINED, progress: bool = True) -> dict[str, list[dict]]:
    """{method: [run per seed]} for notebook 12: the LoRA methods of all seeds packed (`run_packed`),
    the coordinate methods one run at a time. Every run is cached."""
    lora = [m for m in methods if m in LORA_METHODS]
    packed = run_packed(model, tok, cfg, lora, progress) if lora else {}
    return {m: [packed[m, s] if m in LORA_METHODS else continual.run_method(m, model, tok, cfg, s, progress)
                for s in cfg.seeds] for m in methods}


def _path(cfg: CLConfig, method: str, seed: int):
    return continual.run_dir(cfg) / f"{method}-seed{seed}-packed.json"


def stage_sources(method: str, t: int, pools: list, buffer: list) -> tuple[list, list]:
    """The pools a LoRA method trains stage t ≥ 1 on and their weights (as `continual.run_method`)."""
    if method == "seq_lora":
        return [pools[t]], [1.0]
    if method == "joint_lora":
        return pools[:t + 1], [len(p) for p in pools[:t + 1]]
    if method == "replay":                               # half the batch from the buffer
        return [pools[t], buffer], [0.5, 0.5]
    raise ValueError(f"unknown LoRA method {method!r}; known: {', '.join(LORA_METHODS)}")


def first_stage(model, tok, cfg: CLConfig, seed: int, pools: list) -> tuple[dict[str, torch.Tensor], list[int]]:
    """The seed's shared stage-1 adapter (peft state-dict names) and R[0][0], trained once and cached."""
    torch.manual_seed(seed)
    lora = get_peft_model(model, cfg.lora_config())
    try:
        named = [(n, p) for n, p in lora.named_parameters() if p.requires_grad]
        R00 = continual._shared_first_stage(lora, tok, [p for _, p in named], pools, cfg, seed, continual.run_dir(cfg))
        return {n.replace(".default", ""): p.detach().clone() for n, p in named}, R00
    finally:
        lora.unload()


def train_stage(flora: FunctionalLoRA, states: dict[str, torch.Tensor], sources: list[tuple[list, list]],
                seeds: list[int], stage: int, cfg: CLConfig, pad_id: int) -> torch.Tensor:
    """One stage of K runs at once: `states` holds the stacked factors (K, ...), updated in place;
    run k draws its batches from sources[k] with the generator of (seeds[k], stage), as its solo run
    (`continual._train`). Returns the (K,) losses of the last step."""
    K, model = len(sources), flora.model
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in states.items()}
    opt = torch.optim.AdamW(list(leaves.values()), lr=cfg.lr, weight_decay=0.0)
    rngs = [np.random.default_rng([s, stage]) for s in seeds]
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    model.train()
    losses = torch.full((K,), float("nan"))
    try:
        for step in range(cfg.steps):
            for g in opt.param_groups:
                g["lr"] = warmup_lr(cfg.lr, step, cfg.warmup)
            items = [continual._items(rng, pools, weights, cfg.batch_size) for rng, (pools, weights) in zip(rngs, sources)]
            batch = build_batch([it for run in items for it in run], pad_id)
            with flora.hooked(leaves):
                lp = target_logprobs(model, batch)
            counts = [sum(len(t) for _, t in run) for run in items]
            losses = torch.stack([-part.mean() for part in torch.split(lp, counts)])
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            clip_per_run(list(leaves.values()), 1.0)
            opt.step()
    finally:
        model.eval()
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    with torch.no_grad():
        for k in states:
            states[k].copy_(leaves[k])
    return losses.detach()


def clip_per_run(leaves: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """`clip_grad_norm_` for each run k separately: its gradient slices [k] of every stacked leaf."""
    norms = torch.stack([g.grad.reshape(g.shape[0], -1).pow(2).sum(1) for g in leaves]).sum(0).sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in leaves:
        g.grad.mul_(scale.view(-1, *([1] * (g.dim() - 1))))
    return norms


def exact_matches(flora: FunctionalLoRA, tok, states: dict[str, torch.Tensor], task_name: str, n: int) -> list[list[int]]:
    """`continual.exact_match` of K adapters (stacked factors) on one task, in shared forwards."""
    task = get_task(task_name)
    pairs = task.test[:n]
    gold = max(len(tok(task.target(y), add_special_tokens=False).input_ids) for _, y in pairs)
    K = next(iter(states.values())).shape[0]
    with flora.hooked(states):
        preds = greedy_answers(flora.model, tok, task, [x for x, _ in pairs], gold + 1, copies=K)
    preds = preds if K > 1 else [preds]
    return [[int(task.score(p, y)) for p, (_, y) in zip(run, pairs)] for run in preds]


def run_packed(model, tok, cfg: CLConfig, methods=LORA_METHODS, progress: bool = True) -> dict[tuple[str, int], dict]:
    """{(method, seed): run} for the LoRA methods: cached runs read back, the rest trained together."""
    check_known(methods, LORA_METHODS, "LoRA method(s)")
    out, todo = {}, []
    for s in cfg.seeds:
        for m in methods:
            path = _path(cfg, m, s)
            if path.exists():
                artefacts.used(path, trained=False)
                out[m, s] = json.loads(path.read_text())
            else:
                todo.append((m, s))
    if not todo:
        return out
    t0, T, pools = time.perf_counter(), len(cfg.tasks), continual._pools(tok, cfg.tasks)
    first = {s: first_stage(model, tok, cfg, s, pools) for s in sorted({s for _, s in todo})}
    states = {k: v.clone() for k, v in stack_states([first[s][0] for _, s in todo]).items()}
    flora = FunctionalLoRA.from_lora_config(model, cfg.lora_config(), "hooks")
    R = {run: [[None] * T for _ in range(T)] for run in todo}
    buffers = {}
    for s in first:
        rng = np.random.default_rng([s, 999])               # the replay buffer: the solo runs' draws
        keep = [rng.choice(len(p), size=min(cfg.replay_per_task, len(p)), replace=False) for p in pools]
        buffers[s] = [[pools[t][k] for t in range(i + 1) for k in keep[t]] for i in range(T)]
    for run in todo:
        R[run][0][0] = first[run[1]][1]
    for t in range(1, T):
        sources = [stage_sources(m, t, pools, buffers[s][t - 1]) for m, s in todo]
        train_stage(flora, states, sources, [s for _, s in todo], t, cfg, tok.pad_token_id)
        with torch.no_grad():
            for i in range(t + 1):
                for run, r in zip(todo, exact_matches(flora, tok, states, cfg.tasks[i], cfg.eval_items)):
                    R[run][t][i] = r
        if progress:
            print(f"  packed LoRA runs ({len(todo)}): stage {t + 1}/{T} ({cfg.tasks[t]}) acc "
                  + ", ".join(f"{m}/{s} {np.mean([np.mean(x) for x in R[m, s][t][:t + 1]]):.2f}" for m, s in todo))
    share = (time.perf_counter() - t0) / len(todo)
    for m, s in todo:
        out[m, s] = dict(method=m, seed=s, R=R[m, s], seconds=share, packed=len(todo))
        atomic_write_json(_path(cfg, m, s), out[m, s])
        artefacts.used(_path(cfg, m, s), trained=True, seconds=share)
    return out



def speed(model, tok, cfg: CLConfig, runs: int | None = None, steps: int = 2, items: int = 16) -> dict:
    """Is training and scoring the runs together faster? `runs` LoRA runs (None: as many as `run_all` packs) of `steps` steps on stage 2's
    task, one at a time through peft (as `continual.run_method`) against all together (`train_stage`),
    and exact match on `items` items, one adapter at a time against shared forwards. Seconds per run
    and step / per run and item, measured once per config and cached (`speed-*.json`)."""
    runs = runs or len(cfg.seeds) * len(LORA_METHODS)
    path = continual.run_dir(cfg) / f"speed-{runs}x{steps}x{items}.json"
    if path.exists():
        return json.loads(path.read_text())
    small, pools = dataclasses.replace(cfg, steps=steps, warmup=1, eval_items=items), continual._pools(tok, cfg.tasks)
    flora, states, t_solo, e_solo = FunctionalLoRA.from_lora_config(model, cfg.lora_config(), "hooks"), [], 0.0, 0.0
    for k in range(runs):
        torch.manual_seed(k)
        lora = get_peft_model(model, cfg.lora_config())
        try:
            named = [(n, p) for n, p in lora.named_parameters() if p.requires_grad]
            t0 = time.perf_counter()
            continual._train(lora, tok, [p for _, p in named], [pools[1]], [1.0], small, k, 1)
            t1 = time.perf_counter()
            continual.exact_match(lora, tok, cfg.tasks[1], items)
            t_solo, e_solo = t_solo + t1 - t0, e_solo + time.perf_counter() - t1
            states.append({n.replace(".default", ""): p.detach().clone() for n, p in named})
        finally:
            lora.unload()
    stacked = stack_states(states)
    t0 = time.perf_counter()
    train_stage(flora, stacked, [([pools[1]], [1.0])] * runs, list(range(runs)), 1, small, tok.pad_token_id)
    t1 = time.perf_counter()
    with torch.no_grad():
        exact_matches(flora, tok, stacked, cfg.tasks[1], items)
    t_pack, e_pack = t1 - t0, time.perf_counter() - t1
    out = dict(runs=runs, steps=steps, items=items, solo_step_s=t_solo / (runs * steps), packed_step_s=t_pack / (runs * steps),
               train_speedup=t_solo / t_pack, solo_item_s=e_solo / (runs * items), packed_item_s=e_pack / (runs * items),
               eval_speedup=e_solo / e_pack)
    atomic_write_json(path, out)
    return out
