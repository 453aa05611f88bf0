"""What a notebook leaves behind: reports/<profile>/<notebook-stem>/ holds metrics.json (flat
name -> number), tables (.md), figures (.png) and claims.json (rows of the claims ledger).
`write_report` assembles every notebook's folder into reports/<profile>/REPORT.md."""
from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path

from .utils import REPO_ROOT, atomic_file, atomic_write_bytes, atomic_write_json, check_profile

SUITE_BUDGET_S = {"quick": 60 * 60}   # the brief's budget for the whole quick suite on 2 cores


def reports_root() -> Path:
    return Path(os.environ.get("LLGBM_REPORTS", REPO_ROOT / "reports"))


class NotebookReport:
    """Collects one notebook's outputs; every write lands on disk at once (atomically)."""

    def __init__(self, stem: str, profile: str):
        self.stem, self.profile = stem, check_profile(profile)
        self.dir = reports_root() / profile / stem
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in [*self.dir.glob("*.md"), *self.dir.glob("*.png"), *self.dir.glob("*.json")]:
            old.unlink()  # a rerun starts clean: never a table or figure left from an earlier run
        self.metrics: dict[str, float] = {}
        self.claims: list[dict] = []

    def log(self, **metrics: float) -> None:
        for k, v in metrics.items():
            if not isinstance(v, numbers.Real) or isinstance(v, bool):  # numpy scalars are Real too
                raise TypeError(f"metric {k!r} must be a number, got {type(v).__name__}")
            self.metrics[k] = float(v)
        atomic_write_json(self.dir / "metrics.json",
                          {k: (v if math.isfinite(v) else None) for k, v in self.metrics.items()})

    def table(self, df, name: str, caption: str = "", floatfmt: str = ".3f") -> None:
        text = (f"*{caption}*\n\n" if caption else "") + df.to_markdown(floatfmt=floatfmt) + "\n"
        atomic_write_bytes(self.dir / f"{name}.md", text.encode())

    def note(self, name: str, markdown: str) -> None:
        """A paragraph for REPORT.md (a verdict, a caveat), rendered in name order with the tables."""
        atomic_write_bytes(self.dir / f"{name}.md", (markdown.strip() + "\n").encode())

    def figure(self, fig, name: str) -> Path:
        path = self.dir / f"{name}.png"
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        return path

    def claim(self, claim: str, source: str, verdict: str, evidence: str) -> None:
        """A claims-ledger row: what was claimed, by whom, and what we measured."""
        self.claims.append(dict(claim=claim, source=source, verdict=verdict, evidence=evidence))
        atomic_write_json(self.dir / "claims.json", self.claims)


def _title(notebook: Path) -> str:
    try:
        for cell in json.loads(notebook.read_text())["cells"]:
            if cell["cell_type"] == "markdown":
                first = "".join(cell["source"]).strip().splitlines()[0]
                return first.lstrip("# ").strip()
    except (OSError, ValueError, KeyError, IndexError):
        pass
    return notebook.stem


def _state(timing: dict) -> str:
    st = timing.get("start_state")
    if not st:
        return "not recorded"
    return (f"{st['state']} ({st['zoo_runs']}/{st['zoo_planned']} teacher runs, {st['generator_runs']} generator runs, "
            f"{st['cached_deltas']} cached deltas)")


def _run_summary(timings: dict) -> list[str]:
    """The report's first lines: when the notebooks ran, how long they took, from which cache state."""
    if not timings:
        return ["No notebook run has been timed yet."]
    finished = sorted(v["finished"] for v in timings.values())
    total = sum(v["seconds"] for v in timings.values())
    states = [v.get("start_state", {}).get("state", "not recorded") for v in timings.values()]
    first = next(iter(sorted(timings.items(), key=lambda kv: kv[1]["finished"])))
    return [f"**This run.** {len(timings)} notebooks, the last finished {finished[-1]} (the first {finished[0]}); "
            f"{total / 60:.0f} min of notebook time in all. The first notebook to run ({first[0]}) found the zoo "
            f"**{_state(first[1])}**; states at each notebook's start: "
            f"{', '.join(f'{s} ×{states.count(s)}' for s in dict.fromkeys(states))}. See Run times below."]


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_report(profile: str, notebooks: list[Path]) -> Path:
    """REPORT.md: one section per notebook (tables, figures, metrics), then the claims ledger."""
    root = reports_root() / check_profile(profile)
    timings_path = root / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    lines = [f"# LLGBM Lab report — `{profile}` profile", "",
             "Every number below was written by a notebook run of the committed code "
             f"(`python -m llgbm.run --profile {profile}`); nothing here is typed by hand.", ""]
    lines += _run_summary(timings) + [""]
    claims = []
    for nb in notebooks:
        d = root / nb.stem
        if not (d / "metrics.json").exists():
            continue
        lines += [f"## {_title(nb)}", "", f"Notebook: `notebooks/{nb.name}` · outputs: `{d.relative_to(root)}/`", ""]
        for table in sorted(d.glob("*.md")):
            lines += [table.read_text().rstrip(), ""]
        for fig in sorted(d.glob("*.png")):
            lines += [f"![{fig.stem}]({fig.relative_to(root).as_posix()})", ""]
        metrics = json.loads((d / "metrics.json").read_text())
        lines += ["<details><summary>metrics.json</summary>", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()] + ["", "</details>", ""]
        if (d / "claims.json").exists():
            claims += json.loads((d / "claims.json").read_text())
    if timings:
        lines += ["## Run times", "", "Wall time of each notebook's latest run on this machine, and what was already",
                  "computed when it started (a notebook rerun over a finished zoo or a warm cache skips that work).", "",
                  "| notebook | seconds | finished | zoo at start |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['seconds']:.0f} | {v['finished']} | {_state(v)} |" for k, v in sorted(timings.items())]
        total = sum(v['seconds'] for v in timings.values())
        lines += [f"| **total** | {total:.0f} | |", ""]
        if profile in SUITE_BUDGET_S:
            budget = SUITE_BUDGET_S[profile]
            lines += [f"Budget for the whole `{profile}` suite: {budget / 60:.0f} min on 2 cores. These runs took "
                      f"{total / 60:.0f} min: **{'within budget' if total <= budget else 'over budget'}**.", ""]
    lines += ["## Claims ledger", ""]
    if claims:
        lines += ["| claim | source | measured verdict | evidence |", "|---|---|---|---|"]
        lines += [f"| {c['claim']} | {c['source']} | **{c['verdict']}** | {c['evidence']} |" for c in claims]
    else:
        lines += ["No notebook in this run has measured a seed claim yet."]
    path = root / "REPORT.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path
