"""The rule that every number a verdict cites comes from the run: `uncited` finds the numbers in a
verdict sentence or a claim's evidence that no metric of the notebook holds at the precision written,
and `NotebookReport` refuses such a sentence (`check_cited`). Thresholds, targets and the seeds'
claimed figures are logged as metrics like any measurement, so a sentence can cite them."""
from __future__ import annotations

import math
import re

# A number in a verdict sentence or a claim's evidence: digits with thousands commas, a decimal part and
# an exponent. Not numbers: names of figures, tables, issues, phases and seeds ("fig. 3", "table 2a",
# "issue 5"), and the level of a CI ("95% CI").
_NUMBER = re.compile(r"(?<![\w.])[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+−]?\d+)?")
_NAMING = re.compile(r"(?:fig\.|figs?\.|figure|table|tables|issue|phase|notebook|notebooks|seed|layer|step|top-)\s*$", re.I)
_CI_LEVEL = re.compile(r"\s*% CI")


def _forms(v: float) -> tuple[float, ...]:
    """How a metric may be written: as is, as a percentage or points (×100), in minutes from seconds
    (÷60), as a share left over (1 − v, ×100), in thousandths of its unit (×1000, ms from s), or in
    millions or billions (parameter counts)."""
    return v, 100 * v, v / 60, 1 - v, 100 * (1 - v), 1000 * v, v / 1e6, v / 1e9


def uncited(text: str, metrics: dict[str, float]) -> list[str]:
    """The numbers in `text` that no metric gives at the precision written (a value matches when it
    rounds to the number, sign aside, in one of `_forms`): every number a verdict cites must come
    from the run's metrics.json, never typed into the code."""
    values = [float(v) for v in metrics.values() if v is not None and math.isfinite(float(v))]
    missing = []
    for m in _NUMBER.finditer(text):
        if _NAMING.search(text[:m.start()]) or _CI_LEVEL.match(text, m.end()):
            continue
        raw = m.group()
        clean = raw.replace("−", "-").replace(",", "").lstrip("+-").lower()
        mantissa = clean.split("e")[0]
        decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
        n = float(clean)
        tol = 0.5 * 10 ** -decimals * (10 ** int(clean.split("e")[1]) if "e" in clean else 1) * (1 + 1e-9) + 1e-12
        if not any(abs(abs(f) - n) <= tol for v in values for f in _forms(v)):
            missing.append(raw)
    return missing


def check_cited(text: str, metrics: dict[str, float], where: str) -> None:
    """Raise when `text` cites a number its metrics do not hold (`uncited`)."""
    missing = uncited(text, metrics)
    if missing:
        raise ValueError(f"{where} cites {missing}, which no metric of this notebook holds at that precision: log each "
                         f"number a verdict states (thresholds and targets too) before writing the sentence. Text: {text[:300]}")
