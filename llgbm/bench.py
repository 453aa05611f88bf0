"""Measuring the machine where we measure the model (nanoGPT's bench.py and estimate_mfu): the fp32
matmul peak of this machine now, model FLOPs per token, timing helpers, and the achieved fraction
of the peak. One module serves the zoo, notebook 03 and the geomlib notebooks."""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Callable

import torch


def measure_matmul_peak(n: int = 2048, repeats: int = 4, trials: int = 5) -> float:
    """This machine's fp32 matmul throughput (FLOP/s) now: the best of `trials` timings, since a
    peak is what the hardware reaches, not the average over moments it was busy elsewhere."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, repeats * 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def body_params(model_config) -> int:
    """Parameters of the decoder blocks' linear layers of a Llama-style config (no embeddings)."""
    h, f = model_config.hidden_size, model_config.intermediate_size
    head_dim = getattr(model_config, "head_dim", None) or h // model_config.num_attention_heads
    q, kv = model_config.num_attention_heads * head_dim, model_config.num_key_value_heads * head_dim
    return model_config.num_hidden_layers * (h * q + 2 * h * kv + q * h + 3 * h * f)


def training_flops_per_token(model_config, target_fraction: float) -> float:
    """Model FLOPs per token of LoRA training: forward (2N) + backward to the activations (2N) over the
    decoder-block linears; the frozen lm_head runs (fwd + bwd) only on the target fraction of tokens.
    The LoRA matmuls and attention scores are left out (both < 2% here): the count is conservative."""
    if not 0.0 <= target_fraction <= 1.0:
        raise ValueError(f"target_fraction is a share of tokens in [0, 1], got {target_fraction}")
    return 4 * body_params(model_config) + 4 * model_config.vocab_size * model_config.hidden_size * target_fraction


def median_time(fn: Callable[[], object], repeats: int = 7, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeats` calls, after `warmup` untimed calls."""
    if repeats < 1:
        raise ValueError(f"repeats must be ≥ 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


def peak_fraction(flops_per_s: float, peak_flops_per_s: float) -> float:
    """Achieved model FLOP/s as a fraction of the measured peak (NaN when either is unknown)."""
    if not (peak_flops_per_s and math.isfinite(peak_flops_per_s) and math.isfinite(flops_per_s)):
        return math.nan
    return flops_per_s / peak_flops_per_s


def rss_mb(peak: bool = False) -> float:
    """This process's resident memory (MB) now, or its peak (/proc's VmHWM, which starts afresh at exec;
    getrusage's ru_maxrss does not: a child started from a large process reports the parent's size)."""
    key = "VmHWM:" if peak else "VmRSS:"
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    """`python -m llgbm.bench --profile quick`: every hot path's time, FLOP/s and fraction of the fp32
    matmul peak measured in the same run, the operator profile of a zoo step, and where the last
    suite run spent its minutes; written to reports/<profile>/bench.md (and bench.json)."""
    import argparse
    import json
    import os
    p = argparse.ArgumentParser(description=main.__doc__.split(";")[0])
    p.add_argument("--profile", default="quick", choices=("smoke", "quick", "full"))
    p.add_argument("--model", default=None, help="model preset or folder (default: the profile's)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per hot path (the median is reported)")
    p.add_argument("--out", default=None, help="markdown file (default: reports/<profile>/bench.md)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be ≥ 1, got {args.repeats}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from . import hotpaths
    from .experiment import GeneratorLab
    from .report import reports_root
    from .tasks import get_task
    from .utils import atomic_write_bytes, atomic_write_json
    try:
        lab = GeneratorLab.load(args.profile, args.model)
    except FileNotFoundError as e:
        raise SystemExit(f"{e}\n(the bench times the generator on the profile's zoo: build it with "
                         f"`python -m llgbm.zoo --profile {args.profile}` first)") from None
    threads = torch.get_num_threads()
    peak = measure_matmul_peak()
    paths = hotpaths.hot_paths(lab, args.repeats)
    peak = max(peak, measure_matmul_peak())       # the peak before and after: the better one
    ops, kinds = hotpaths.op_profile(lab.model, lab.tokenizer, lab.zoo_cfg, get_task(lab.training_tasks[0]))
    notebooks, cells = hotpaths.suite_breakdown(args.profile)
    out = Path(args.out) if args.out else reports_root() / args.profile / "bench.md"
    table = __import__("pandas").DataFrame([p.row(peak) for p in paths]).set_index("hot path")
    text = "\n\n".join([
        f"# Hot paths ({args.profile}, {lab.model_name}, {threads} threads)",
        f"fp32 matmul peak measured in this run: **{peak / 1e9:.0f} GFLOP/s** (best of 2048² matmuls, before and "
        f"after the paths). FLOPs are counted by torch's FlopCounterMode (matmuls and attention, padding included); "
        f"\"useful\" keeps only the real tokens' share. Median of {args.repeats} calls. Written by "
        f"`python -m llgbm.bench --profile {args.profile}`.",
        table.to_markdown(floatfmt=".3g"),
        "## Where a zoo training step spends its time (torch.profiler, self CPU time per step)",
        kinds.to_markdown(floatfmt=".3g"), ops.to_markdown(floatfmt=".3g"),
        f"## Where the last {args.profile} suite run spent its minutes",
        "Each notebook's last recorded wall time (reports/<profile>/timings.json; `start` is the cache state it "
        "started from), then the slowest cells of the executed notebooks (papermill's cell durations).",
        notebooks.to_markdown(floatfmt=".3g") if len(notebooks) else "(no suite run recorded)",
        cells.to_markdown(floatfmt=".3g") if len(cells) else "(no executed notebooks)",
    ]) + "\n"
    atomic_write_bytes(out, text.encode())
    atomic_write_json(out.with_suffix(".json"), dict(profile=args.profile, model=lab.model_name, threads=threads,
                                                     **hotpaths.as_json(paths, peak)))
    print(text)
    print(f"[llgbm.bench] wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
