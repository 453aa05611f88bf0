"""Notebook 12's continual-learning benchmark on a real pretrained LM: tasks trained one after the
other, the accuracy matrix R[t][i] (exact match on the same test items after every stage) and
ACC / BWT, for coordinate modulation (task id given: a learned θ per task; or θ inferred by the
predictor) against sequential LoRA (the lower bound), joint LoRA on the tasks seen so far (the upper
bound), LoRA with experience replay, and one LoRA per task (the zoo's teachers: BWT 0 by
construction). Every (method, seed) result is cached as JSON; the first stage, the same for the three
trained LoRA methods, is trained once per seed and cached beside them."""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from peft import LoraConfig, get_peft_model

from llgbm.core import artefacts
from llgbm.core import stats as hier_stats
from llgbm.core.lora import LORA_TARGETS
from llgbm.core.tasks import get_task
from llgbm.core.utils import atomic_file, atomic_write_json, check_profile, config_hash, llgbm_home, preset_config, warmup_lr
from llgbm.eval.scoring import build_batch, encode_pairs, evaluate_adapter, greedy_answers, target_logprobs

from .host import CoordinateConfig, modulate

METHODS = ("coords_given", "coords_inferred", "seq_lora", "joint_lora", "replay", "per_task_lora")
TRAINED = METHODS[:5]


@dataclass(frozen=True)
class CLConfig:
    tasks: tuple[str, ...] = ("add_1", "caesar_1", "number_words_en", "number_words_es", "country_en_to_es")
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 30                  # per stage (the zoo's teachers: 30 steps of 8)
    batch_size: int = 8
    lr: float = 3e-3                 # every method alike (the zoo's LoRA rate)
    warmup: int = 3
    eval_items: int = 64             # the first test items of each task, the same after every stage (≥ 64: the protocol)
    lora_rank: int = 8
    replay_per_task: int = 16        # items kept from each earlier task; half of every later batch replays them
    num_coordinates: int = 1024      # the seed's θ dimension (norm √1024 = 32)
    wavelets: tuple[tuple[str, int], ...] = (("q_proj", 2), ("k_proj", 2), ("v_proj", 2), ("gate_proj", 2))
    modulation_rank: int = 4         # ~2.6M modulation parameters on SmolLM2, near the LoRA's 2.4M
    predictor_hidden: int = 128

    @classmethod
    def preset(cls, profile: str, **overrides) -> "CLConfig":
        base = {"smoke": dict(tasks=("add_1", "add_3", "country_en_to_de", "country_en_to_it"), seeds=(0, 1), steps=3,
                              batch_size=4, warmup=1, eval_items=4, replay_per_task=4, num_coordinates=32, predictor_hidden=16),
                "quick": {}, "full": dict(steps=80, eval_items=100)}[check_profile(profile)]
        return preset_config(cls, base, overrides)

    def coordinate_config(self, num_tasks: int = 0) -> CoordinateConfig:
        return CoordinateConfig(num_coordinates=self.num_coordinates, modulation_rank=self.modulation_rank, wavelets=self.wavelets,
                                init="zero", pooling="causal", predictor_hidden=self.predictor_hidden, num_tasks=num_tasks)

    def lora_config(self) -> LoraConfig:
        return LoraConfig(r=self.lora_rank, lora_alpha=2 * self.lora_rank, target_modules=list(LORA_TARGETS),
                          lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")


def exact_match(model, tok, task_name: str, n: int) -> np.ndarray:
    """Greedy exact match (bool per item) on the task's first n test items."""
    task = get_task(task_name)
    pairs = task.test[:n]
    gold = max(len(tok(task.target(y), add_special_tokens=False).input_ids) for _, y in pairs)
    preds = greedy_answers(model, tok, task, [x for x, _ in pairs], gold + 1)
    return np.array([task.score(p, y) for p, (_, y) in zip(preds, pairs)], dtype=bool)


def _items(rng: np.random.Generator, pools: list[list], weights: list[float], n: int) -> list:
    """n training items: each from pool k with probability weights[k] (then uniformly within it)."""
    which = rng.choice(len(pools), size=n, p=np.asarray(weights) / sum(weights))
    return [pools[k][rng.integers(len(pools[k]))] for k in which]


def _train(model, tok, params, pools, weights, cfg: CLConfig, seed: int, stage: int, context=None) -> float:
    """One stage: cfg.steps AdamW steps on batches drawn from `pools`; returns the last loss."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    rng = np.random.default_rng([seed, stage])
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = warmup_lr(cfg.lr, step, cfg.warmup)
        batch = build_batch(_items(rng, pools, weights, cfg.batch_size), tok.pad_token_id)
        with context() if context else contextlib.nullcontext():
            loss = -target_logprobs(model, batch).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    model.eval()
    return loss.item()


def run_dir(cfg: CLConfig):
    """Where the runs of this config are cached (each (method, seed) one JSON file)."""
    return llgbm_home() / "continual" / config_hash(dict(cfg=asdict(cfg), v=1))


def _pools(tok, tasks):
    return [encode_pairs(tok, get_task(t), get_task(t).train) for t in tasks]


def run_method(method: str, model, tok, cfg: CLConfig, seed: int, progress: bool = True) -> dict:
    """Train `method` through the task sequence with this seed; R[t][i] as per-item correctness
    (lists of 0/1; None for tasks not yet trained). Cached under $LLGBM_HOME/continual/."""
    if method not in TRAINED:
        raise ValueError(f"unknown trained method {method!r}; known: {', '.join(TRAINED)} (per_task_lora: see per_task_rows)")
    path = run_dir(cfg) / f"{method}-seed{seed}.json"
    if path.exists():
        artefacts.used(path, trained=False)
        return json.loads(path.read_text())
    torch.manual_seed(seed)
    T, pools, t0 = len(cfg.tasks), _pools(tok, cfg.tasks), time.perf_counter()
    R: list[list] = [[None] * T for _ in range(T)]
    extra = {}
    if method.startswith("coords"):
        host = modulate(model, cfg.coordinate_config(num_tasks=T if method == "coords_given" else 0))
        try:
            for t, name in enumerate(cfg.tasks):
                params = host.modulation_parameters() + ([host.task_theta] if method == "coords_given"
                                                          else list(host.predictor.parameters()))
                ctx = (lambda t=t: host.coordinates(task=t)) if method == "coords_given" else None
                _train(model, tok, params, [pools[t]], [1.0], cfg, seed, t, ctx)
                for i in range(t + 1):
                    with host.coordinates(task=i) if method == "coords_given" else contextlib.nullcontext():
                        R[t][i] = exact_match(model, tok, cfg.tasks[i], cfg.eval_items).astype(int).tolist()
                if progress:
                    print(f"  {method} seed {seed}: stage {t + 1}/{T} ({name}) acc {[np.mean(r) for r in R[t][:t + 1]]}")
            if method == "coords_inferred":
                extra = inferred_coordinates(host, tok, cfg)
        finally:
            host.detach()
    else:
        lora = get_peft_model(model, cfg.lora_config())
        try:
            params = [p for p in lora.parameters() if p.requires_grad]
            rng = np.random.default_rng([seed, 999])
            buffer = []
            for t, name in enumerate(cfg.tasks):
                keep = rng.choice(len(pools[t]), size=min(cfg.replay_per_task, len(pools[t])), replace=False)
                if t == 0:                                    # the same for every LoRA method: trained once
                    R[0][0] = _shared_first_stage(lora, tok, params, pools, cfg, seed, path.parent)
                    buffer += [pools[t][k] for k in keep]
                    if progress:
                        print(f"  {method} seed {seed}: stage 1/{T} ({name}) acc {np.mean(R[0][0])}")
                    continue
                if method == "seq_lora":
                    src, w = [pools[t]], [1.0]
                elif method == "joint_lora":
                    src, w = pools[:t + 1], [len(p) for p in pools[:t + 1]]
                else:                                         # replay: half the batch from the buffer
                    src, w = [pools[t], buffer], [0.5, 0.5]
                _train(lora, tok, params, src, w, cfg, seed, t)
                buffer += [pools[t][k] for k in keep]
                for i in range(t + 1):
                    R[t][i] = exact_match(lora, tok, cfg.tasks[i], cfg.eval_items).astype(int).tolist()
                if progress:
                    print(f"  {method} seed {seed}: stage {t + 1}/{T} ({name}) acc {[np.mean(r) for r in R[t][:t + 1]]}")
        finally:
            lora.unload()
    out = dict(method=method, seed=seed, R=R, seconds=time.perf_counter() - t0, **extra)
    atomic_write_json(path, out)
    artefacts.used(path, trained=True, seconds=out["seconds"])
    return out


def _shared_first_stage(lora, tok, params, pools, cfg: CLConfig, seed: int, folder) -> list[int]:
    """Stage 1 of the LoRA methods: sequential, joint and replay LoRA all train on the first task alone,
    from the same initialisation (the seed's) with the same batches, so it is trained once per seed and
    its adapter and scores are cached beside the runs (loaded into `lora` in place); returns R[0][0]."""
    from safetensors.torch import load_file, save_file
    weights, scores = folder / f"lora-stage1-seed{seed}.safetensors", folder / f"lora-stage1-seed{seed}.json"
    trainable = {n: p for n, p in lora.named_parameters() if p.requires_grad}
    if weights.exists() and scores.exists():          # scores are written last: both there means complete
        state = load_file(weights)
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(state[n])
        return json.loads(scores.read_text())["R00"]
    _train(lora, tok, params, [pools[0]], [1.0], cfg, seed, 0)
    R00 = exact_match(lora, tok, cfg.tasks[0], cfg.eval_items).astype(int).tolist()
    with atomic_file(weights) as tmp:
        save_file({n: p.detach().contiguous() for n, p in trainable.items()}, str(tmp))
    atomic_write_json(scores, dict(R00=R00, tasks=list(cfg.tasks[:1]), seed=seed))
    return R00


@torch.no_grad()
def inferred_coordinates(host, tok, cfg: CLConfig) -> dict:
    """θ the predictor assigns each test prompt (at its last token), the per-task centroids of the θ of
    training prompts, and routing: is a test prompt's θ nearest (cosine) its own task's centroid?"""
    def thetas(pairs, task):
        out = []
        for x, _ in pairs:
            ids = torch.tensor([tok(task.prompt(x), add_special_tokens=False).input_ids])
            out.append(host.predict(ids)[0, -1])
        return torch.stack(out)
    tasks = [get_task(t) for t in cfg.tasks]
    test = [thetas(t.test[:cfg.eval_items], t) for t in tasks]
    centroids = torch.stack([thetas(t.train[:cfg.eval_items], t).mean(0) for t in tasks])
    X = torch.cat(test)
    labels = np.repeat(np.arange(len(tasks)), [len(x) for x in test])
    sims = torch.nn.functional.normalize(X, dim=-1) @ torch.nn.functional.normalize(centroids, dim=-1).T
    routed = (sims.argmax(1).numpy() == labels)
    return dict(theta_test=X.tolist(), theta_labels=labels.tolist(), routing_correct=routed.astype(int).tolist())


def per_task_rows(model, tok, cfg: CLConfig, teachers: dict[str, str], base: dict[str, np.ndarray]) -> list[list]:
    """R for one LoRA per task (the zoo's teacher of each task, the task id given): after stage t the
    trained tasks answer with their own adapter, so R[t][i] = R[i][i] and BWT = 0 by construction."""
    acc = {}
    for name in cfg.tasks:
        if name not in teachers:
            raise ValueError(f"the zoo has no teacher for {name!r}: build the zoo with this task (notebook 00) first")
        acc[name] = evaluate_adapter(model, tok, get_task(name), adapter=teachers[name], n=cfg.eval_items).correct.astype(int)
    T = len(cfg.tasks)
    return [[acc[cfg.tasks[i]].tolist() if i <= t else None for i in range(T)] for t in range(T)]


def acc_bwt(R: list[list]) -> tuple[float, float]:
    """ACC = mean_i R[T][i]; BWT = mean_{i<T} (R[T][i] − R[i][i]) (negative: forgetting)."""
    T = len(R)
    acc = float(np.mean([np.mean(R[-1][i]) for i in range(T)]))
    bwt = float(np.mean([np.mean(R[-1][i]) - np.mean(R[i][i]) for i in range(T - 1)]))
    return acc, bwt


def acc_bwt_ci(runs: list[dict], n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Seed-mean ACC and BWT with 95% intervals that resample the seeds, then the tasks
    (`stats.hierarchical_bootstrap`; `_ci_low`/`_ci_high`), and beside them the item-only intervals
    (items resampled within each task, the same items at every stage and seed; `_item_ci_low`/`_high`)."""
    per_task = {"acc": np.array([[np.mean(r["R"][-1][i]) for i in range(len(r["R"]))] for r in runs]),
                "bwt": np.array([[np.mean(r["R"][-1][i]) - np.mean(r["R"][i][i]) for i in range(len(r["R"]) - 1)] for r in runs])}
    out = {}
    for k, x in per_task.items():
        iv = hier_stats.hierarchical_bootstrap({k: x}, (1,) * x.shape[1], lambda m, k=k: m[k], n_boot=n_boot, seed=seed)
        out.update({f"{k}_ci_low": iv.lo, f"{k}_ci_high": iv.hi})
    items = _acc_bwt_item_ci(runs, n_boot, seed)
    return items | out | {f"{k}_item_ci_{e}": items[f"{k}_ci_{e}"] for k in ("acc", "bwt") for e in ("low", "high")}


def _acc_bwt_item_ci(runs: list[dict], n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Seed-mean ACC and BWT with 95% bootstrap intervals over test items only."""
    T, n = len(runs[0]["R"]), len(runs[0]["R"][-1][0])
    cube = np.full((len(runs), T, T, n), np.nan)
    for s, run in enumerate(runs):
        for t in range(T):
            for i in range(t + 1):
                cube[s, t, i] = run["R"][t][i]
    rng = np.random.default_rng(seed)

    def stats(c):
        final = c[:, -1].mean(-1)                          # (seeds, T)
        diag = np.stack([c[:, i, i].mean(-1) for i in range(T)], 1)
        return final.mean(1).mean(), (final[:, :-1] - diag[:, :-1]).mean(1).mean()
    acc, bwt = stats(cube)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=(T, n))
        boots.append(stats(np.stack([cube[:, :, i][..., idx[i]] for i in range(T)], 2)))
    lo, hi = np.quantile(np.array(boots), [0.025, 0.975], axis=0)
    return dict(acc=float(acc), acc_ci_low=float(lo[0]), acc_ci_high=float(hi[0]), bwt=float(bwt),
                bwt_ci_low=float(lo[1]), bwt_ci_high=float(hi[1]))
