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

from llgbm.core.utils import machine  # noqa: F401  (re-exported: the CPU a timing ran on)


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
