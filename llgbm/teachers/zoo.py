"""The teacher-LoRA zoo: one peft LoRA per (task, seed), keeping the last few consecutive steps as
checkpoints (as DnD keeps late checkpoints), each a standard peft adapter folder. The runs
themselves (config, training alone or packed, resume state) are llgbm.teachers.run's.

Crash-safe: every run is (see llgbm.teachers.run), and `manifest.json` is rebuilt from the finished
runs' records. `python -m llgbm.zoo --profile P` builds a profile's zoo, split across the processes
of `accelerate launch` when there are several."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from llgbm.core import artefacts
from llgbm.core import cache as cache_file
from llgbm.core import models
from llgbm.core.lora import adapter_hash
from llgbm.core.tasks import get_task
from llgbm.core.timing import measure_matmul_peak, peak_fraction, training_flops_per_token
from llgbm.core.utils import PROFILES, atomic_write_json, hash_bytes, llgbm_home
from llgbm.eval.scoring import evaluate_task
from llgbm.teachers.run import HASH_VERSION, ZooConfig, saved_step, train_packed, train_teacher


def zoo_dir(profile: str, model_name: str, cfg: ZooConfig | None = None) -> Path:
    """Where a profile's zoo lives; the folder name carries the training config's hash, so teachers
    trained under other settings are never mistaken for these."""
    cfg = cfg or ZooConfig.preset(profile)
    return llgbm_home() / "zoo" / f"{Path(model_name).name}-{profile}-{cfg.training_key()}"


def read_manifest(root: Path) -> list[dict]:
    """The zoo's checkpoints (one row per checkpoint) from its finished runs' records, read only. A
    record written before canonical hashing gets its hashes computed here, in memory
    (`write_manifest` stores them)."""
    rows = []
    for path in sorted(Path(root).glob("*/seed*/run.json")):
        record = json.loads(path.read_text())
        rows += [c if c.get("hash_version") == HASH_VERSION else
                 dict(c, hash=adapter_hash(Path(root) / c["path"]), hash_version=HASH_VERSION) for c in record["checkpoints"]]
    return rows


def write_manifest(root: Path) -> list[dict]:
    """Rebuild manifest.json from the finished runs' records (for the zoo's builders); a record
    written before canonical hashing is updated in place with its new hashes."""
    for path in sorted(Path(root).glob("*/seed*/run.json")):
        record = json.loads(path.read_text())
        if any(c.get("hash_version") != HASH_VERSION for c in record["checkpoints"]):
            for c in record["checkpoints"]:
                c.update(hash=adapter_hash(Path(root) / c["path"]), hash_version=HASH_VERSION)
            atomic_write_json(path, record)
    rows = read_manifest(root)
    atomic_write_json(Path(root) / "manifest.json", rows)
    return rows


def load_manifest(profile: str, model_name: str, cfg: ZooConfig | None = None,
                  root: Path | str | None = None) -> tuple[ZooConfig, Path, list[dict]]:
    """(config, folder, manifest) of a profile's finished zoo (or of the zoo in `root`), read only; a
    clear error when there is none yet."""
    cfg = cfg or ZooConfig.preset(profile)
    root = Path(root) if root is not None else zoo_dir(profile, model_name, cfg)
    manifest = read_manifest(root) if root.exists() else []
    if not manifest:
        raise FileNotFoundError(f"no teacher zoo at {root}: build it with notebooks/00_baseline.ipynb "
                                f"(profile={profile!r}) or zoo.build_zoo(model, tokenizer, cfg, root)")
    artefacts.used(*sorted({(root / row["path"]).parent for row in manifest}), trained=False)
    return cfg, root, manifest


def teacher_folders(profile: str, model_name: str, tasks, seed: int = 0) -> dict[str, str]:
    """{task: the folder of its `seed` teacher's last checkpoint} from the profile's finished zoo."""
    _, root, manifest = load_manifest(profile, model_name)
    out = {}
    for row in sorted(manifest, key=lambda r: (r["task"], r["seed"], r["step"])):
        if row["task"] in tasks and row["seed"] == seed:
            out[row["task"]] = str(root / row["path"])
    return out


def zoo_runs(cfg: ZooConfig, rank: int = 0, world_size: int = 1) -> list[tuple[str, int]]:
    """The (task, seed) runs of a zoo, or process `rank`'s share of them out of `world_size`: every
    world_size-th run from the rank-th on, so the shares are disjoint, cover every run, and differ
    in size by at most one."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) with world_size >= 1; got rank={rank}, world_size={world_size}")
    return [(t, s) for t in cfg.task_names() for s in cfg.seeds][rank::world_size]


def missing_runs(cfg: ZooConfig, root: Path) -> list[tuple[str, int]]:
    """The runs of `cfg` not yet finished in `root`. None when `root` holds runs trained under another
    config: a zoo given on purpose (a test's, a user's own) is used as it is, never extended."""
    finished = [json.loads(p.read_text()) for p in Path(root).glob("*/seed*/run.json")]
    if any(ZooConfig.from_record(r).training_key() != cfg.training_key() for r in finished):
        return []
    done = {(r["task"], r["seed"]) for r in finished}
    return [run for run in zoo_runs(cfg) if run not in done]


def build_zoo(base_model, tokenizer, cfg: ZooConfig, root: Path, progress: bool = True, rank: int = 0,
              world_size: int = 1) -> list[dict]:
    """Train every (task, seed) run not yet finished (with `world_size` > 1: this process's share of
    them, see zoo_runs); return the records of those runs. One process also rebuilds the manifest
    after each run; across processes build_zoo_across does it once every rank is done."""
    records, peak = {}, None
    mine = zoo_runs(cfg, rank, world_size)
    todo = [r for r in mine if not (root / r[0] / f"seed{r[1]}" / "run.json").exists()]
    if cfg.pack > 1:       # packs of runs standing at one step (fresh ones, or resumed from the same step)
        by_step: dict[int, list] = {}
        for r in todo:
            by_step.setdefault(saved_step(root, *r), []).append(r)
        groups = [g[i:i + cfg.pack] for g in by_step.values() for i in range(0, len(g), cfg.pack)]
    else:
        groups = [[r] for r in todo]
    desc = f"zoo (rank {rank}/{world_size})" if world_size > 1 else "zoo"
    for group in tqdm(groups, desc=desc + (f", packs of {cfg.pack}" if cfg.pack > 1 else ""), disable=not progress):
        peak = peak or measure_matmul_peak()   # once, right before this process trains anything
        if len(group) > 1:
            for rec in train_packed(base_model, tokenizer, group, cfg, root, progress=progress, matmul_peak=peak, rank=rank):
                records[rec["task"], rec["seed"]] = rec
        else:
            records[group[0]] = train_teacher(base_model, tokenizer, *group[0], cfg, root, progress=progress,
                                              matmul_peak=peak, rank=rank)
        if world_size == 1:
            write_manifest(root)
    for t, s in mine:          # finished before: read back
        if (t, s) not in records:
            records[t, s] = train_teacher(base_model, tokenizer, t, s, cfg, root, progress=False)
    if world_size == 1:
        write_manifest(root)
    return [records[r] for r in mine]


def build_zoo_across(base_model, tokenizer, cfg: ZooConfig, root: Path, state, progress: bool = True) -> list[dict]:
    """build_zoo split across the processes of an accelerate `state` (PartialState or Accelerator):
    each rank trains its share, rank 0 writes the one manifest once all are done, and every rank
    returns the records of all runs. Crash-safe as build_zoo is: rerun after any rank dies and the
    finished runs are skipped, the interrupted ones resume from their last saved state."""
    build_zoo(base_model, tokenizer, cfg, root, progress=progress, rank=state.process_index,
              world_size=state.num_processes)
    state.wait_for_everyone()
    if state.is_main_process:
        write_manifest(root)
    state.wait_for_everyone()
    return [json.loads((root / t / f"seed{s}" / "run.json").read_text()) for t, s in zoo_runs(cfg)]


def base_scores(model, tokenizer, names: list[str], n: int, cache: Path | None = None,
                progress: bool = True) -> dict[str, dict[str, float]]:
    """{task: {acc, loglik}} of the base model on each task's first `n` test items. With `cache` (a
    JSON file inside the zoo folder, whose name carries the base model), each task's scores are kept
    under a hash of the exact texts scored, so a rerun evaluates nothing and an edited task is
    re-scored; the file is rewritten atomically after every task."""
    saved = cache_file.read(cache) or {}
    out = {}
    for name in tqdm(names, desc="base eval", disable=not progress):
        task = get_task(name)
        texts = [[task.prompt(x), task.target(y)] for x, y in task.test[:n]]
        key = f"{name}-{hash_bytes(json.dumps(texts).encode())[:16]}"
        if key not in saved:
            scores = evaluate_task(model, tokenizer, task, n=n)
            saved[key] = dict(acc=float(scores.acc), loglik=float(scores.loglik_mean))
            if cache is not None:
                cache_file.write(cache, saved)
        out[name] = saved[key]
    return out


def teachers_vs_base(model, tokenizer, cfg: ZooConfig, manifest: list[dict], progress: bool = True,
                     root: Path | None = None):
    """Per task: the base model's and the final teachers' (mean over seeds) exact match and gold
    log-likelihood on the same first `cfg.eval_items` test items, and the gain in exact match. The
    teachers' scores come from their run records; the base model's are cached in the zoo folder
    `root` when it is given (see `base_scores`)."""
    base = base_scores(model, tokenizer, cfg.task_names(), cfg.eval_items,
                       None if root is None else Path(root) / f"base_scores_{cfg.eval_items}.json", progress)
    last = {}
    for r in sorted(manifest, key=lambda r: r["step"]):
        last[r["task"], r["seed"]] = r
    final = pd.DataFrame(last.values()).groupby("task")[["test_acc", "test_loglik"]].mean()
    table = pd.DataFrame.from_dict({n: dict(family=get_task(n).family, heldout=get_task(n).heldout, base_acc=base[n]["acc"],
                                            teacher_acc=final.test_acc.get(n, math.nan), base_loglik=base[n]["loglik"],
                                            teacher_loglik=final.test_loglik.get(n, math.nan)) for n in cfg.task_names()},
                                   orient="index")
    table["gain_acc"] = table.teacher_acc - table.base_acc
    return table


def zoo_throughput(records: list[dict], model_config) -> dict:
    """Tokens/s, model FLOP/s and their fraction of the matmul peak measured when those runs trained,
    over the runs' own training time (eval and I/O excluded)."""
    tokens = sum(r["train_tokens"] for r in records)
    seconds = sum(r["train_seconds"] for r in records)
    if not tokens or not seconds:
        return dict(tokens_per_s=math.nan, flops_per_s=math.nan, peak_flops_per_s=math.nan, peak_fraction=math.nan)
    tps = tokens / seconds
    target_fraction = sum(r["train_target_tokens"] for r in records) / tokens
    flops = tps * training_flops_per_token(model_config, target_fraction)
    peak = sum(r.get("matmul_peak_flops", math.nan) * r["train_seconds"] for r in records) / seconds
    return dict(tokens_per_s=tps, flops_per_s=flops, peak_flops_per_s=peak, peak_fraction=peak_fraction(flops, peak))
