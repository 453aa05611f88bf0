"""The lab's hot paths, measured in one process so that their fractions of the fp32 matmul peak
compare (`python -m llgbm.bench`), plus the two profiles behind them: where a zoo training step
spends its time (torch.profiler, by operator) and where a whole suite run spent its minutes (the
executed notebooks' cell times).

FLOPs are counted, not estimated: torch's FlopCounterMode counts every matmul and attention the
path executes (padding included) on one untimed call; the same call repeated gives the median
time. "useful" counts only real tokens' share of a path's tokens."""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from llgbm.core import lora
from llgbm.core.compiling import compiled_backbone
from llgbm.core.functional import FunctionalLoRA, delta_forwards
from llgbm.core.tasks import get_task
from llgbm.core.timing import median_time
from llgbm.eval.lm import perplexity, pydoc_windows
from llgbm.eval import scoring
from llgbm.eval.scoring import (build_batch, encode_pairs, evaluate_adapter, evaluate_adapters, evaluate_task, gold_loglik,
                                greedy_answers, target_logprobs)
from llgbm.generator import train
from llgbm.notebook.report import reports_root
from llgbm.teachers import packing
from llgbm.teachers.run import batch_indices, train_teacher
from llgbm.teachers.zoo import zoo_throughput

OBJECTIVES = ("weight", "delta", "kd", "sft", "delta+sft")   # a generator step with each


@dataclass
class HotPath:
    name: str
    seconds: float          # median per call
    flops: float            # counted per call (matmuls and attention, padding included)
    tokens: int = 0         # tokens a call processes (padding included); 0: not token-shaped
    real_tokens: int = 0    # of which real (not padding)
    note: str = ""
    items: int = 0          # test items a call scores (evaluation paths); 0: not item-shaped

    def row(self, peak: float) -> dict:
        rate = self.flops / self.seconds
        useful = self.real_tokens / self.tokens if self.tokens else math.nan
        return {"hot path": self.name, "ms / call": 1e3 * self.seconds,
                "real tokens/s": self.real_tokens / self.seconds if self.tokens else math.nan,
                "items/s": self.items / self.seconds if self.items else math.nan,
                "GFLOP/s": rate / 1e9, "fraction of peak": rate / peak,
                "useful fraction of peak": rate * useful / peak if self.tokens else math.nan,
                "padded share": 1 - useful if self.tokens else math.nan, "note": self.note}


def counted_flops(fn) -> float:
    """FLOPs of one call of `fn`, as torch's FlopCounterMode counts them (forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def measure(name: str, fn, repeats: int, tokens: int = 0, real_tokens: int = 0, note: str = "", items: int = 0) -> HotPath:
    """One counted (and warming) call, then the median time of `repeats` calls."""
    flops = counted_flops(fn)
    return HotPath(name, median_time(fn, repeats, warmup=0), flops, tokens, real_tokens, note, items)


class ZooStep:
    """One LoRA training step as `zoo.train_teacher` takes it (the same batch each call), on its own
    peft copy of the LoRA layers; `close()` strips them from the shared base model."""

    def __init__(self, model, tokenizer, zoo_cfg, task):
        from peft import get_peft_model

        self.model = get_peft_model(model, zoo_cfg.lora_config())
        self.model.train()
        encoded = encode_pairs(tokenizer, task, task.train)
        picks = batch_indices(len(encoded), zoo_cfg.batch_size, 0, 0)
        self.batch = build_batch([encoded[i] for i in picks], tokenizer.pad_token_id, next(model.parameters()).device)
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=zoo_cfg.lr)

    @property
    def tokens(self) -> tuple[int, int]:
        return self.batch["input_ids"].numel(), int(self.batch["attention_mask"].sum())

    def __call__(self) -> None:
        loss = -target_logprobs(self.model, self.batch).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def close(self) -> None:
        self.model.unload()


def zoo_step(model, tokenizer, zoo_cfg, task, repeats: int, compile: bool = False) -> HotPath:
    """A zoo training step, eager or (`compile`) with the decoder stack under torch.compile: FLOPs
    counted on an eager call (the same work), the first compiled call (the compile) timed apart."""
    step = ZooStep(model, tokenizer, zoo_cfg, task)
    name, note = f"zoo training step (batch {zoo_cfg.batch_size})", f"peft LoRA r={zoo_cfg.rank}, fwd+bwd+AdamW, {task.name}"
    try:
        if not compile:
            return measure(name, step, repeats, *step.tokens, note=note)
        flops = counted_flops(step)
        with compiled_backbone(step.model):
            first = median_time(step, 1, warmup=0)
            seconds = median_time(step, repeats, warmup=1)
        return HotPath(f"{name}, compiled", seconds, flops, *step.tokens, note=f"{note}; torch.compile, first call {first:.0f} s")
    finally:
        step.close()


def packed_zoo_step(model, tokenizer, zoo_cfg, task_list, repeats: int, pack_len: int | None = None) -> HotPath:
    """One step of len(task_list) teachers trained together, packed (`zoo.train_packed`'s step)."""
    lcfg, pack_len = zoo_cfg.lora_config(), pack_len or zoo_cfg.pack_len
    teachers = packing.PackedTeachers(model, lcfg, [packing.initial_state(model, lcfg, t.name, 0) for t in task_list],
                                      zoo_cfg.lr)
    encoded = [encode_pairs(tokenizer, t, t.train) for t in task_list]
    picks = [[enc[i] for i in batch_indices(len(enc), zoo_cfg.batch_size, 0, 0)] for enc in encoded]
    batch = packing.pack(picks, pack_len, tokenizer.pad_token_id)
    real = sum(len(a) + len(b) for ex in picks for a, b in ex)
    return measure(f"zoo training step, {len(task_list)} teachers packed (batch {zoo_cfg.batch_size} each, rows of "
                   f"{batch['input_ids'].shape[1]})", lambda: teachers.step(batch, zoo_cfg.lr), repeats,
                   batch["input_ids"].numel(), real, note=f"{batch['input_ids'].shape[0]} rows, one AdamW")


def evaluation_paths(model, tokenizer, task, n: int, repeats: int) -> list[HotPath]:
    """The two halves of `scoring.evaluate_task` on `n` test items: the gold log-likelihood
    forward and greedy decoding (HF generate, KV cache on)."""
    pairs = task.test[:n]
    encoded = encode_pairs(tokenizer, task, pairs)
    longest = max(len(p) + len(t) for p, t in encoded)
    real = sum(len(p) + len(t) for p, t in encoded)
    loglik = measure(f"gold log-lik forward ({n} items)", lambda: gold_loglik(model, tokenizer, task, pairs, batch_size=n),
                     repeats, n * longest, real, "lm_head at answer positions only")
    new = max(len(t) for _, t in encoded) + 1
    prompts = [len(p) for p, _ in encoded]
    greedy = measure(f"greedy decoding ({n} items, {new} new tokens)",
                     lambda: greedy_answers(model, tokenizer, task, [x for x, _ in pairs], new, batch_size=n),
                     repeats, n * (max(prompts) + new), sum(prompts) + n * new, "left-padded, KV cache")
    return [loglik, greedy]


def kshot_evaluation(model, tokenizer, task, n: int, repeats: int, shots: int = 4) -> list[HotPath]:
    """k-shot scoring (log-lik and greedy exact match) of `n` items behind the task's demonstrations:
    the prefix read again for every item, then read once (`scoring.SharedPrefix`, its KV cache reused)."""
    from llgbm.lab.baselines import icl_prefix  # lazy: the bench's one use of the lab's few-shot prompt
    prefix = icl_prefix(task, shots)

    def score(reuse: bool):
        before, scoring.REUSE_PREFIX = scoring.REUSE_PREFIX, reuse
        try:
            return evaluate_task(model, tokenizer, task, n, prefix=prefix)
        finally:
            scoring.REUSE_PREFIX = before
    return [measure(f"{shots}-shot scoring, prefix read per item", lambda: score(False), repeats, items=n),
            measure(f"{shots}-shot scoring, prefix read once", lambda: score(True), repeats, items=n,
                    note="KV cache of the demonstrations shared by the items")]


def adapter_evaluation(lab, task, n: int, repeats: int, n_adapters: int = 4) -> list[HotPath]:
    """Scoring `n_adapters` zoo adapters on the same `n` items (log-lik and greedy exact match), before
    and after shared forwards: one at a time through peft, then all in one hooked batch."""
    folders = [lab.root / r["path"] for r in lab.manifest[:n_adapters]]
    one = lambda: [evaluate_adapter(lab.model, lab.tokenizer, task, f, n=n) for f in folders]   # noqa: E731
    shared = lambda: evaluate_adapters(lab.model, lab.tokenizer, task, folders, n=n)             # noqa: E731
    k = len(folders)
    return [measure(f"evaluation, {k} adapters one at a time (peft)", one, repeats, items=k * n, note=f"{n} items each"),
            measure(f"evaluation, {k} adapters in shared forwards", shared, repeats, items=k * n,
                    note=f"{n} items each, hooks + KV cache")]


def perplexity_path(model, tokenizer, repeats: int, n_windows: int = 8, window: int = 128) -> HotPath:
    windows = pydoc_windows(tokenizer, "eval", n_windows, window)
    return measure(f"perplexity forward ({n_windows}×{window} tokens)", lambda: perplexity(model, windows, n_windows),
                   repeats, windows.numel(), windows.numel(), "full-vocabulary logits")


def functional_paths(lab, repeats: int, n_adapters: int = 4) -> list[HotPath]:
    """The delta forward on the probe texts: merged weights (the reference), FunctionalLoRA's hooks
    with one adapter, and `n_adapters` adapters in one hooked forward."""
    probes, base = lab.supervision.probes, lab.supervision.base
    hooks = FunctionalLoRA.from_lora_config(lab.model, lab.zoo_cfg.lora_config(), "hooks")
    states = [lora.load_adapter_weights(lab.root / r["path"]) for r in lab.manifest[:n_adapters]]
    tokens, real = probes["input_ids"].numel(), int(probes["attention_mask"].sum())
    with delta_forwards(hooks, states, probes, base) as calls, torch.no_grad():
        return [measure("delta forward, merged weights", calls["merged weights, forward"], repeats, tokens, real, "the reference"),
                measure("delta forward, FunctionalLoRA hooks", calls["hooks, forward"], repeats, tokens, real, "1 adapter"),
                measure(f"delta forward, {len(states)} adapters in one hooked forward",
                        calls[f"hooks, {len(states)} adapters in one forward"], repeats, len(states) * tokens, len(states) * real,
                        "per-example LoRA factors")]


def generator_steps(lab, objectives=OBJECTIVES, steps: int = 3, compile: bool = False) -> list[HotPath]:
    """One generator training step per objective, through `training.train` itself (in a scratch run
    folder): the FLOPs of one step counted, the median of `steps` further steps timed. `compile` runs
    the timed steps with the decoder stack under torch.compile (the first step, the compile, is left
    out of the median and noted; a batch of a new shape may recompile once more, so `steps` + 2 are
    timed)."""
    paths = []
    for objective in objectives:
        cfg = lab.config(objective, ckpt_every=10**9, keep_steps=())
        outputs = lab.outputs if cfg.uses_outputs else None
        if outputs is not None:
            outputs.warm(lab.data.rows, progress=False)     # the teacher top-k cache, as a warm run has it
        sup = lab.supervision if cfg.lambda_d else None
        with tempfile.TemporaryDirectory() as tmp:
            run = lambda n, sub: train.train(lab.data, lab.gcfg, replace(cfg, steps=n), 0, sup,   # noqa: E731
                                                run_dir=Path(tmp) / sub, progress=False, outputs=outputs)
            flops = counted_flops(lambda: run(1, "counted"))
            with compiled_backbone(lab.model, enabled=compile):
                times = run(steps + 1 + 2 * compile, "timed").history["seconds"]
        seconds = float(np.median(times[1:]))
        note = f"batch {cfg.batch_size}" + (", LM forward+backward" if objective != "weight" else ", no LM")
        paths.append(HotPath(f"generator step, {objective}" + (", compiled" if compile else ""), seconds, flops,
                             note=note + (f"; torch.compile, first step {times[0]:.0f} s" if compile else "")))
    return paths


def op_profile(model, tokenizer, zoo_cfg, task, top: int = 15) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Where a zoo training step spends its time: torch.profiler's self CPU time per operator over
    3 steps (after 1 warmup), the top operators and the share of each kind of work."""
    from torch.profiler import ProfilerActivity, profile
    step = ZooStep(model, tokenizer, zoo_cfg, task)
    try:
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step()
    finally:
        step.close()
    ops = pd.DataFrame([dict(op=e.key, calls=e.count, self_ms=e.self_cpu_time_total / 1e3 / 3)
                        for e in prof.key_averages()]).sort_values("self_ms", ascending=False)
    ops = ops[ops.self_ms > 0]
    total = ops.self_ms.sum()
    ops["share"] = ops.self_ms / total
    ops["kind"] = ops.op.map(op_kind)
    kinds = ops.groupby("kind")[["self_ms", "share"]].sum().sort_values("self_ms", ascending=False)
    return ops.head(top).set_index("op"), kinds


def op_kind(op: str) -> str:
    """The kind of work an aten operator does, for the profile's summary."""
    op = op.removeprefix("aten::")
    if op in ("mm", "addmm", "bmm", "matmul", "linear", "baddbmm"):
        return "matmul (GEMM)"
    if "attention" in op or op.startswith("_scaled_dot"):
        return "attention"
    if "softmax" in op or op in ("nll_loss", "gather", "scatter_add_", "index", "index_put_"):
        return "softmax, gather, indexing"
    if op.startswith("_foreach") or op in ("_fused_adamw_", "addcdiv_", "addcmul_", "lerp_", "sqrt"):
        return "optimizer"
    if op in ("copy_", "clone", "contiguous", "cat", "to", "_to_copy", "empty", "zeros", "fill_", "zero_", "transpose",
              "view", "reshape", "expand", "t", "permute", "slice", "select", "unsqueeze", "as_strided", "empty_like"):
        return "copies and views"
    if op in ("pow", "mean", "rsqrt", "mul", "add", "add_", "silu", "neg", "sum", "div", "sub", "mul_", "cos", "sin",
              "silu_backward", "rsub", "pow_backward", "exp", "where", "masked_fill"):
        return "elementwise (norms, SiLU, RoPE, scaling)"
    return "other"


def suite_breakdown(profile: str, top: int = 12) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Where a suite run's minutes went: each notebook's last recorded wall time (timings.json) and
    its slowest cells (papermill's per-cell durations in reports/<profile>/_executed/)."""
    folder = reports_root() / profile
    timings = json.loads((folder / "timings.json").read_text()) if (folder / "timings.json").exists() else {}
    notebooks = pd.DataFrame([dict(notebook=k, seconds=v["seconds"],
                                   start=(v.get("start_state") or {}).get("state", "?"), finished=v.get("finished", ""))
                              for k, v in timings.items()])
    cells = []
    for path in sorted((folder / "_executed").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        for i, cell in enumerate(nb["cells"]):
            seconds = (cell.get("metadata", {}).get("papermill") or {}).get("duration")
            if cell["cell_type"] == "code" and seconds:
                first = next((ln for ln in "".join(cell["source"]).splitlines() if ln.strip() and not ln.startswith("#")), "")
                cells.append(dict(notebook=path.stem, cell=i, seconds=float(seconds), code=first[:70]))
    cells = pd.DataFrame(cells, columns=["notebook", "cell", "seconds", "code"])
    if len(notebooks):
        notebooks = notebooks.sort_values("seconds", ascending=False).set_index("notebook")
        notebooks["share"] = notebooks.seconds / notebooks.seconds.sum()
    return notebooks, cells.sort_values("seconds", ascending=False).head(top).reset_index(drop=True)


def compiled_paths(lab, repeats: int = 3, objectives=("kd",)) -> list[HotPath]:
    """The training hot paths again with the decoder stack under torch.compile: a zoo step and the
    generator steps of `objectives` (LM-backed), to set beside their eager rows."""
    return ([zoo_step(lab.model, lab.tokenizer, lab.zoo_cfg, get_task(lab.training_tasks[0]), repeats, compile=True)]
            + generator_steps(lab, objectives, steps=repeats, compile=True))


def teacher_runs(lab, tasks: list[str], peak: float, compile_modes=(False, True)) -> pd.DataFrame:
    """Whole teacher runs (`zoo.train_teacher`, the zoo's own batches of varying length) trained eager
    and compiled into a scratch folder, one after the other in this process: training seconds, tokens/s
    and the zoo's model FLOP/s (`zoo.zoo_throughput`; `peak` is stored in the records). The first
    compiled run pays the compile and the recompile for a second batch shape; the next ones show what
    a zoo would get per teacher."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for compiled in compile_modes:
            cfg = replace(lab.zoo_cfg, compile=compiled)
            for task in tasks:
                rec = train_teacher(lab.model, lab.tokenizer, task, 0, cfg, Path(tmp) / str(compiled), progress=False,
                                    matmul_peak=peak)
                tp = zoo_throughput([rec], lab.model.config)
                rows.append({"teacher": task, "compiled": compiled, "steps": rec["steps"], "train seconds": rec["train_seconds"],
                             "tokens/s": tp["tokens_per_s"], "model GFLOP/s": tp["flops_per_s"] / 1e9})
    return pd.DataFrame(rows).set_index(["compiled", "teacher"])


def hot_paths(lab, repeats: int = 3, eval_items: int = 32) -> list[HotPath]:
    """Every hot path on the lab's model, in one process (the peak is measured by the caller)."""
    task = get_task(lab.heldout[0])
    paths = [zoo_step(lab.model, lab.tokenizer, lab.zoo_cfg, get_task(lab.training_tasks[0]), repeats)]
    paths += [packed_zoo_step(lab.model, lab.tokenizer, lab.zoo_cfg, [get_task(t) for t in lab.training_tasks[:k]], repeats,
                              pack_len) for k, pack_len in ((1, 128), (4, 128), (4, 256))]
    paths += evaluation_paths(lab.model, lab.tokenizer, task, eval_items, repeats)
    paths += kshot_evaluation(lab.model, lab.tokenizer, task, eval_items, repeats)
    paths += adapter_evaluation(lab, task, eval_items, repeats)
    paths += generator_steps(lab, steps=repeats)
    paths += functional_paths(lab, repeats)
    paths.append(perplexity_path(lab.model, lab.tokenizer, repeats))
    return paths


def as_json(paths: list[HotPath], peak: float) -> dict:
    return dict(peak_flops_per_s=peak, paths=[dict(asdict(p), **{k: v for k, v in p.row(peak).items()
                                                                if k in ("fraction of peak", "useful fraction of peak")})
                                              for p in paths])
