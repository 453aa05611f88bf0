"""Probe texts for delta activations (seed 002): generic instruction templates, as Delta
Activations uses, and domain probes drawn from a task family's own prompts."""
from __future__ import annotations

from llgbm.core.tasks import families, get_task, list_tasks

# Delta Activations' recipe: a few short, generic instructions with no task content, so the
# probe set is shared by every adapter and the delta reflects the adapter, not the probe.
GENERIC_PROBES = (
    "Please answer the following question.",
    "Complete the following task.",
    "Give a short answer to the input below.",
    "Respond to the instruction.",
    "Here is an input. Write the output.",
)


def create_generic_probes(n: int | None = None) -> list[str]:
    """The generic probe set (the first `n` of them when given)."""
    return list(GENERIC_PROBES[:n])


def create_domain_probes(domain: str, n: int = 8) -> list[str]:
    """Prompts of a task family (or of one task, by name): the first `n`, interleaved across tasks,
    taken from training splits of non-held-out tasks so no held-out test input leaks into probes."""
    if domain in families():
        names = list_tasks(family=domain, heldout=False) or list_tasks(family=domain)
    else:
        names = [get_task(domain).name]  # raises with the known names if unknown
    per_task = [get_task(t).prompts("train") for t in names]
    interleaved = [p for group in zip(*per_task) for p in group]
    if not interleaved:
        raise ValueError(f"domain {domain!r} has no training prompts")
    return interleaved[:n]
