"""Language-model measurements shared by the geomlib notebooks: fixed token windows from Python's
own documentation (pydoc_data topics, offline English prose), perplexity, and CPU throughput."""
from __future__ import annotations

import time

import torch


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
