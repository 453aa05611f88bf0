"""One ledger per LLGBM notebook (00 `baseline`, 01 `delta_caching`, 02 `dataset`, 03
`differentiable_delta`, 04 `multitask`, 04b `ablations`, 05 `delta_only`, 06 `suite`: phase 6 on the
large suite): the notebook's metrics, claims and verdict sentence, computed from its numbers and tested. A ledger's
`entry(...)` returns an `Entry` that `NotebookReport.record` writes in one call."""
from __future__ import annotations

from typing import NamedTuple


class Entry(NamedTuple):
    metrics: dict[str, float]
    claims: list[tuple[str, str, str, str]]      # (claim, source, verdict, evidence)
    verdict: str
