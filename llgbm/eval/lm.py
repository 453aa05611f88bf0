"""Language-model measurements shared by the geomlib notebooks: token windows from Python's own
documentation (pydoc_data topics, offline English prose; the standard library's module docstrings as a
second corpus) for perplexity of a pretrained model, and
the same text as a small corpus for models trained from scratch (notebooks 12 and 13)."""
from __future__ import annotations

import time

import numpy as np
import torch

from llgbm.core.models import load_tokenizer


def pydoc_windows(tokenizer, split: str, n_windows: int, window: int = 128) -> torch.Tensor:
    """(n_windows, window) token ids. 'calib' draws from the even-numbered topics, 'eval' from the
    odd ones, so calibration and evaluation text never overlap."""
    from pydoc_data.topics import topics
    if split not in ("calib", "eval"):
        raise ValueError(f"split must be 'calib' or 'eval', got {split!r}")
    keys = sorted(topics)[split == "eval"::2]
    ids = tokenizer("\n\n".join(topics[k] for k in keys), add_special_tokens=False).input_ids
    if len(ids) < n_windows * window:
        raise ValueError(f"the {split} text has {len(ids)} tokens, fewer than {n_windows} windows of {window}")
    return torch.tensor(ids[: n_windows * window]).view(n_windows, window)


DOCSTRING_SKIP = ("test", "tests", "idlelib", "lib2to3", "site-packages", "turtledemo", "__phello__", "tkinter", "ensurepip")


def stdlib_docstrings(min_chars: int = 200) -> list[str]:
    """The module docstrings of this Python's standard library (files sorted by path; tests, IDLE,
    tkinter and installed packages left out; docstrings under `min_chars` dropped): a second offline
    English text, written apart from the pydoc topics. Each file is read only up to its first statement."""
    import ast
    import inspect
    import os
    import sysconfig
    import tokenize
    from pathlib import Path
    files = []
    for folder, subs, names in os.walk(sysconfig.get_paths()["stdlib"]):
        subs[:] = [d for d in subs if d not in DOCSTRING_SKIP]          # pruned, not walked: site-packages is large
        files += [Path(folder) / n for n in names if n.endswith(".py")]
    docs = []
    for path in sorted(files):
        try:
            with tokenize.open(path) as f:
                first = next(t for t in tokenize.generate_tokens(f.readline)
                             if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.ENCODING))
            doc = inspect.cleandoc(ast.literal_eval(first.string)) if first.type == tokenize.STRING else ""
        except (SyntaxError, UnicodeDecodeError, ValueError, StopIteration, tokenize.TokenError):
            continue
        if isinstance(doc, str) and len(doc) >= min_chars:
            docs.append(doc)
    return docs


def docstring_windows(tokenizer, n_windows: int, window: int = 128) -> torch.Tensor:
    """(n_windows, window) token ids of `stdlib_docstrings`: evaluation text from a second corpus, so a
    perplexity calibrated on pydoc topics is not measured in-domain only."""
    ids = tokenizer("\n\n".join(stdlib_docstrings()), add_special_tokens=False).input_ids
    if len(ids) < n_windows * window:
        raise ValueError(f"the stdlib docstrings have {len(ids)} tokens, fewer than {n_windows} windows of {window}")
    return torch.tensor(ids[: n_windows * window]).view(n_windows, window)


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int = 8) -> tuple[float, float]:
    """(perplexity, tokens/s) of a causal LM over the windows; every window is scored from its start."""
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    t0 = time.perf_counter()
    for i in range(0, len(windows), batch_size):
        ids = windows[i:i + batch_size].to(device)
        logits = model(input_ids=ids).logits[:, :-1].float()
        nll += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                 reduction="sum").item()
        count += ids[:, 1:].numel()
    seconds = time.perf_counter() - t0
    return float(torch.exp(torch.tensor(nll / count))), windows.numel() / seconds


@torch.no_grad()
def interleaved_speed(models: dict, windows: torch.Tensor, repeats: int = 7) -> "pd.DataFrame":
    """Forward tokens/s of each model on the same windows, the models taking turns `repeats` times (so
    that a slow spell of the machine falls on all of them): per model the median over repeats, the
    min and max, and the relative spread (max − min) / median. One warm-up pass each first."""
    import pandas as pd
    for m in models.values():
        m(input_ids=windows[:1])
    times = {name: [] for name in models}
    for _ in range(repeats):
        for name, m in models.items():
            t0 = time.perf_counter()
            m(input_ids=windows)
            times[name].append(windows.numel() / (time.perf_counter() - t0))
    rows = {name: dict(median=float(np.median(v)), min=float(np.min(v)), max=float(np.max(v)), repeats=len(v))
            for name, v in times.items()}
    out = pd.DataFrame(rows).T
    out["spread"] = (out["max"] - out["min"]) / out["median"]
    return out


def pydoc_corpus(tokenizer_name: str = "smollm2", val_every: int = 10, block: int = 1024) -> dict:
    """The pydoc_data topics in one tokenizer, cut into blocks of `block` tokens: every `val_every`-th
    block is validation text (the last 10% of a text, nanoGPT-style, but spread over all topics so that
    validation is not one topic's jargon). Ids are compacted to the tokens the corpus uses (a
    relabelling, so the head is not 49k wide for a 5k-token text); `bytes_per_token` turns nats per token into bits per byte."""
    from pydoc_data.topics import topics

    tok = load_tokenizer(tokenizer_name)
    text = "\n\n".join(topics[k] for k in sorted(topics))
    ids = torch.tensor(tok(text, add_special_tokens=False).input_ids)
    blocks = list(ids.split(block))
    split = {"train": torch.cat([b for i, b in enumerate(blocks) if i % val_every != val_every - 1]),
             "val": torch.cat([b for i, b in enumerate(blocks) if i % val_every == val_every - 1])}
    vocab = torch.unique(ids)
    remap = torch.full((int(vocab.max()) + 1,), -1, dtype=torch.long)
    remap[vocab] = torch.arange(len(vocab))
    bytes_per_token = len(text.encode()) / len(ids)
    return dict(train=remap[split["train"]], val=remap[split["val"]], vocab=vocab, tokenizer=tok,
                bytes_per_token=bytes_per_token)


def unigram_entropy(ids: torch.Tensor, vocab_size: int) -> float:
    """Entropy (nats/token) of the unigram distribution of `ids`: the loss of a model that ignores
    context, the floor a trained LM must beat."""
    p = torch.bincount(ids.flatten(), minlength=vocab_size).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def random_windows(tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of training step `step`: a pure function of (seed, step), so every model and
    every rerun or resume sees the same windows."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, len(tokens) - seq_len - 1, (batch_size,), generator=g)
    w = torch.stack([tokens[s:s + seq_len + 1] for s in starts.tolist()])
    return w[:, :-1], w[:, 1:]
