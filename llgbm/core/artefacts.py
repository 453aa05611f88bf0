"""Which trained artefacts a notebook run trained and which it read back (issue 30: each trained
artefact is trained once, and a run two notebooks need is the same cached run).

The places that train or read back a trained artefact (a zoo teacher, a held-out plateau teacher, a
multi-task LoRA, a generator run, a continual-learning, IGBundle or INL run, a recovered compressed
model) call `used(folder, trained=...)`. While `start(path)` is on (a `NotebookReport` starts it),
each call lands in that notebook's artefacts.json; the report joins the notebooks' files into one
table of every artefact and the notebooks that use it. With nothing started (tests, the commands)
`used` does nothing."""
from __future__ import annotations

import json
from pathlib import Path

from llgbm.core.utils import atomic_write_json, llgbm_home

# An artefact's kind, from where it lives under LLGBM_HOME (the first matching prefix).
KINDS = (("zoo/", "teacher (zoo)"), ("suite/teachers/", "held-out teacher (to its dev plateau)"),
         ("suite/multitask/", "multi-task LoRA"), ("generators/", "generator run"),
         ("continual/", "continual-learning run"), ("coordinates/scratch/", "model from scratch (coordinates)"), ("igbundle/", "IGBundle run"), ("inl/", "INL run"),
         ("calabi/models/", "recovered compressed model"))
_log: dict = dict(path=None, rows={})


def key_of(folder: Path | str) -> str:
    """An artefact's name: its folder under LLGBM_HOME (the full path when it lives elsewhere)."""
    folder = Path(folder).resolve()
    try:
        return folder.relative_to(llgbm_home().resolve()).as_posix()
    except ValueError:
        return folder.as_posix()


def kind_of(key: str) -> str:
    return next((kind for prefix, kind in KINDS if key.startswith(prefix)), "other")


def start(path: Path | str) -> None:
    """Record into `path` from now on (a fresh record)."""
    _log.update(path=Path(path), rows={})
    atomic_write_json(_log["path"], {})


def stop() -> None:
    _log.update(path=None, rows={})


def used(*folders: Path | str, trained: bool, seconds: float | None = None,
         steps: tuple[int, int] | None = None) -> None:
    """The artefacts in `folders` were trained (`trained`, taking `seconds` in all, when known) or read
    back by this run. An artefact trained once in a run stays filed as trained there. `steps` (from,
    to) says which training steps this run took when it resumed or continued a run that another had
    started (a later notebook training a cached run longer takes only the steps after it: not the
    same work twice); without it the run trained the artefact whole."""
    if _log["path"] is None or not folders:
        return
    if steps is not None and not (0 <= steps[0] <= steps[1]):
        raise ValueError(f"steps must be (from, to) with 0 <= from <= to, not {steps!r}")
    for folder in folders:
        key = key_of(folder)
        old = _log["rows"].get(key, {})
        row = dict(kind=kind_of(key), trained=bool(trained or old.get("trained")))
        spent = [s for s in (old.get("seconds"), seconds / len(folders) if seconds is not None and trained else None)
                 if s is not None]
        if spent:
            row["seconds"] = round(sum(spent), 3)                  # ms: a smoke teacher takes < 0.05 s
        whole = (old.get("trained") and "steps" not in old) or (trained and steps is None)
        span = [tuple(old["steps"])] if "steps" in old else []
        if trained and steps is not None:
            span.append(tuple(steps))
        if span and not whole:                                     # trained whole once in this run: stays whole
            row["steps"] = [min(a for a, _ in span), max(b for _, b in span)]
        _log["rows"][key] = row
    atomic_write_json(_log["path"], _log["rows"])


def overlap(spans: list[list[int] | None]) -> bool:
    """Whether training spans (from, to) of one artefact in several runs share a step: a span of None
    (trained whole, or not recorded) overlaps every other."""
    if any(s is None for s in spans):
        return len(spans) > 1
    ordered = sorted(map(tuple, spans))
    return any(b[0] < a[1] for a, b in zip(ordered, ordered[1:]))


def read(path: Path | str) -> dict:
    """{artefact: row} that a run wrote to `path` ({} when none)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {}
