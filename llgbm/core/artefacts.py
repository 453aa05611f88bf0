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


def used(*folders: Path | str, trained: bool, seconds: float | None = None) -> None:
    """The artefacts in `folders` were trained (`trained`, taking `seconds` in all, when known) or read
    back by this run. An artefact trained once in a run stays filed as trained there."""
    if _log["path"] is None or not folders:
        return
    for folder in folders:
        key = key_of(folder)
        old = _log["rows"].get(key, {})
        row = dict(kind=kind_of(key), trained=bool(trained or old.get("trained")))
        spent = [s for s in (old.get("seconds"), seconds / len(folders) if seconds is not None and trained else None)
                 if s is not None]
        _log["rows"][key] = dict(row, **({"seconds": round(sum(spent), 3)} if spent else {}))   # ms: a smoke teacher takes < 0.05 s
    atomic_write_json(_log["path"], _log["rows"])


def read(path: Path | str) -> dict:
    """{artefact: row} that a run wrote to `path` ({} when none)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {}
