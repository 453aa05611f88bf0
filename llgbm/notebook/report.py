"""What a notebook leaves behind: reports/<profile>/<notebook-stem>/ holds metrics.json (flat
name -> number), tables (.md), figures (.png) and claims.json (rows of the claims ledger).
`write_report` assembles every notebook's folder into reports/<profile>/REPORT.md."""
from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path

from llgbm.core import artefacts, flops
from llgbm.core.utils import REPO_ROOT, atomic_file, atomic_write_bytes, atomic_write_json, check_profile
from llgbm.eval.compare import labelled
from llgbm.notebook.cite import check_cited, uncited  # noqa: F401  (uncited: the report's public check)
from llgbm.notebook import usage
from llgbm.notebook.provenance import code_state, provenance_line

# The whole quick suite on 2 cores, cold: no slower than the 230 min measured on the 24-task suite before
# the large one (issue 27; the brief: it must get faster, not slower, as it grows) ...
SUITE_BUDGET_S = {"quick": 230 * 60}
SUITE_WARM_BUDGET_S = {"quick": 10 * 60}   # ... and a warm rerun of it
# Cold budgets per notebook in quick on 2 cores (the brief): 00 ≤ 15 min, 04b ≤ 20, 06 ≤ 90, 10 ≤ 25,
# 11 ≤ 15, 12 ≤ 30, others ≤ 10.
NOTEBOOK_BUDGET_S = {"00_baseline": 15 * 60, "04b_ablations": 20 * 60, "06_zeroshot": 90 * 60, "10_igbundle": 25 * 60,
                     "11_calabi": 15 * 60, "12_coordinates": 30 * 60}
DEFAULT_NOTEBOOK_BUDGET_S = 10 * 60


def budget_text() -> str:
    """The notebooks with their own budgets, as "00 ≤ 15 min; 04b ≤ 20 min; …"."""
    return "; ".join(f"{k.split('_')[0]} ≤ {v / 60:.0f} min" for k, v in NOTEBOOK_BUDGET_S.items())


def notebook_budget(stem: str) -> float:
    return NOTEBOOK_BUDGET_S.get(stem, DEFAULT_NOTEBOOK_BUDGET_S)


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
        atomic_write_json(self.dir / "run.json", code_state(stem))     # the code these outputs come from
        flops.start(self.dir / "flops.json")              # what the run computes, for the suite's use of the peak
        artefacts.start(self.dir / "artefacts.json")      # the trained artefacts it trains or reads back
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
        """`df` as a markdown table, its stable column keys shown by their labels (`compare.labelled`),
        a missing or undefined value (a single run's spread) as n/a."""
        text = (f"*{caption}*\n\n" if caption else "") + labelled(df.astype(object).where(df.notna(), None)).to_markdown(floatfmt=floatfmt, missingval="n/a") + "\n"
        atomic_write_bytes(self.dir / f"{name}.md", text.encode())

    def note(self, name: str, markdown: str) -> str:
        """A paragraph for REPORT.md (a verdict, a caveat), rendered in name order with the tables, and
        returned for the notebook to show. A verdict note (its name holds "verdict") may cite only
        numbers in this notebook's metrics."""
        if "verdict" in name:
            check_cited(markdown, self.metrics, f"{self.stem} note {name!r}")
        atomic_write_bytes(self.dir / f"{name}.md", (markdown.strip() + "\n").encode())
        return markdown

    def figure(self, fig, name: str) -> Path:
        path = self.dir / f"{name}.png"
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        return path

    def claims_from(self, source: str, rows) -> None:
        """Claims-ledger rows (claim, verdict, evidence) that share one source (a seed's ledger)."""
        for claim, verdict, evidence in rows:
            self.claim(claim, source, verdict, evidence)

    def record(self, entry, name: str = "9_verdict", title: str = "Verdict") -> str:
        """A ledger's entry (metrics, claims, verdict: `llgbm.lab.ledgers.Entry`) written in one call,
        the verdict as note `name`; returns the verdict sentence for the notebook to show."""
        self.log(**entry.metrics)
        for c in entry.claims:
            self.claim(*c)
        self.note(name, f"**{title}.** " + entry.verdict)
        return entry.verdict

    def claim(self, claim: str, source: str, verdict: str, evidence: str) -> None:
        """A claims-ledger row: what was claimed, by whom, and what we measured; its verdict and evidence
        may cite only numbers in this notebook's metrics (log them first)."""
        check_cited(f"{verdict} | {evidence}", self.metrics, f"{self.stem} claim {claim!r}")
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


def _verdict(seconds: float | None, budget: float | None) -> str:
    if seconds is None or budget is None:
        return "—"
    return "met" if seconds <= budget else f"**missed** by {(seconds - budget) / 60:.0f} min"


def _about(run: dict) -> list[str]:
    return [*([f"on {run['machine']}"] if run.get("machine") else []), *([run["note"]] if run.get("note") else [])]


def _machines_line(timings: dict) -> list[str]:
    """Which machine each cold or warm run timed on, when more than one machine (or an unrecorded
    one beside a recorded one) is in the table: times from different CPUs compare only roughly."""
    by = {}
    for k, v in sorted(timings.items()):
        for m, r in v.get("runs", {}).items():
            by.setdefault(r.get("machine"), []).append(f"{k} {m}")
    if len(by) < 2:
        return []
    parts = [f"{name}: {', '.join(runs)}" for name, runs in by.items() if name]
    if None in by:
        parts.append(f"not recorded (runs from before runs recorded their machine): {len(by[None])} runs")
    return ["- Machines (times from different CPUs compare only roughly): " + "; ".join(parts) + "."]


def run_times(profile: str, timings: dict) -> list[str]:
    """The report's run-times section: per notebook its budget, its latest cold run (started from an
    empty cache) and its latest warm rerun with their verdicts, and the suite totals against the
    suite's cold and warm budgets. Runs from a partly filled cache are listed apart: they are neither."""
    budgeted = profile in SUITE_BUDGET_S
    kinds = {k: {m: r["seconds"] for m, r in v.get("runs", {}).items()} for k, v in timings.items()}
    lines = ["## Run times", "",
             "Wall time of each notebook on this machine (2 cores), filed by the cache the suite run started from: "
             "**cold** (an empty `~/.cache/llgbm`: every teacher, generator and score computed) or **warm** (a rerun "
             "over a finished cache). " + (f"Budgets (cold, quick): {budget_text()}; every other notebook ≤ "
                                         f"{DEFAULT_NOTEBOOK_BUDGET_S / 60:.0f} min; the suite ≤ {SUITE_BUDGET_S[profile] / 60:.0f} "
                                         f"min cold and ≤ {SUITE_WARM_BUDGET_S[profile] / 60:.0f} min warm." if budgeted else ""), "",
             "| notebook | budget (cold) | cold run (s) | cold verdict | warm run (s) | latest run (s) | zoo at its start |",
             "|---|---|---|---|---|---|---|"]
    for k, v in sorted(timings.items()):
        cold, warm = kinds[k].get("cold"), kinds[k].get("warm")
        budget = notebook_budget(k) if budgeted else None
        lines.append(f"| {k} | {f'{budget / 60:.0f} min' if budget else '—'} | {'—' if cold is None else f'{cold:.0f}'} | "
                     f"{_verdict(cold, budget)} | {'—' if warm is None else f'{warm:.0f}'} | {v['seconds']:.0f} | {_state(v)} |")
    latest = sum(v["seconds"] for v in timings.values())
    totals = {m: sum(kinds[k][m] for k in timings) if all(m in kinds[k] for k in timings) else None for m in ("cold", "warm")}
    fmt = lambda t: "—" if t is None else f"{t:.0f}"   # noqa: E731
    cold_budget, warm_budget = SUITE_BUDGET_S.get(profile), SUITE_WARM_BUDGET_S.get(profile)
    lines += [f"| **suite** | {f'{cold_budget / 60:.0f} min' if budgeted else '—'} | {fmt(totals['cold'])} | "
              f"{_verdict(totals['cold'], cold_budget)} | {fmt(totals['warm'])} | {latest:.0f} | |", ""]
    if budgeted:
        for m, budget in (("cold", cold_budget), ("warm", warm_budget)):
            lines.append(f"- Whole suite, {m}: " + _suite_line(kinds, m, budget))
        lines += [f"- The latest runs of all notebooks (of any cache state) add up to {latest / 60:.0f} min."]
    lines += [f"- {k}, {m} run: {r['note']}" for k, v in sorted(timings.items()) for m, r in v.get("runs", {}).items() if r.get("note")]
    lines += _machines_line(timings)
    lines += [f"- {k}, an earlier {h['mode']} run (replaced by the one above): {h['seconds']:.0f} s, finished "
              + "; ".join([h["finished"], *_about(h)]) for k, v in sorted(timings.items()) for h in reversed(v.get("history", []))]
    if budgeted:
        lines += gap_lines(timings, bench_bounds(profile), cold_budget)
    return lines + [""]


def bench_bounds(profile: str) -> dict | None:
    """What the hot paths of reports/<profile>/bench.json leave to gain by running the same FLOPs
    faster: the lowest and highest fraction of the fp32 peak a path reaches (its useful fraction
    where padding counts), and the speedups they bound: at most 1/lowest if every path reached the
    peak, highest/lowest if every path reached the best fraction any path reaches here."""
    path = reports_root() / profile / "bench.json"
    if not path.exists():
        return None
    fractions = {}
    for p in json.loads(path.read_text())["paths"]:
        f = p.get("useful fraction of peak")
        f = p["fraction of peak"] if f is None or (isinstance(f, float) and math.isnan(f)) else f
        fractions[p["name"]] = f
    lo, hi = min(fractions, key=fractions.get), max(fractions, key=fractions.get)
    return dict(lowest=fractions[lo], lowest_path=lo, highest=fractions[hi], highest_path=hi,
                peak_bound=1 / fractions[lo], practical_bound=fractions[hi] / fractions[lo])


def _gap_class(need: float, bounds: dict) -> str:
    if need > bounds["peak_bound"]:
        return ("**Beyond even the peak bound**: running the same work faster cannot close it; only less work (reuse "
                "where runs repeat work, or a protocol change, stated as one) or faster hardware can")
    if need > bounds["practical_bound"]:
        return "**Beyond the practical bound**, within the peak bound: it needs its paths nearer the peak than any path gets here"
    return ("**Within the practical bound**: closable in principle by code, if its paths ran at the best fraction "
            "measured here, or by doing less repeated work")


def gap_lines(timings: dict, bounds: dict | None, suite_budget: float) -> list[str]:
    """For each notebook whose cold run missed its budget: by how much, the speedup it needs, where its
    minutes went (its slowest cells, when recorded) and whether the bench's bounds on running the same
    FLOPs faster can cover it; the same for the cold suite's timed notebooks together. The bounds
    cover running the same work faster, not doing less of it (reuse, caching)."""
    missed = {k: v["runs"]["cold"] for k, v in sorted(timings.items())
              if "cold" in v.get("runs", {}) and v["runs"]["cold"]["seconds"] > notebook_budget(k)}
    if not missed:
        return []
    lines = ["", "**Where the cold budgets are missed, and what it would take.**"]
    if bounds:
        lines.append(f"The bench (bench.md) bounds what running the same FLOPs faster can give on this machine: its slowest "
                     f"hot path ({bounds['lowest_path']}) runs at {bounds['lowest']:.2f} of the fp32 peak, so no notebook "
                     f"can gain more than {bounds['peak_bound']:.1f}× if every path reached the peak, or "
                     f"{bounds['practical_bound']:.1f}× if every path reached the best fraction any path reaches here "
                     f"({bounds['highest']:.2f}, {bounds['highest_path']}). Doing less work (reuse, caching) is not bounded by this.")
    for k, run in missed.items():
        need = run["seconds"] / notebook_budget(k)
        cells = "; ".join(f"cell {c['cell']} `{c['code']}` {c['seconds']:.0f} s ({c['seconds'] / run['seconds']:.0%})"
                          for c in run.get("cells", [])[:3])
        lines.append(f"- {k}: missed by {(run['seconds'] - notebook_budget(k)) / 60:.0f} min; it needs {need:.1f}× less time. "
                     + (f"Its slowest cells: {cells}." if cells else "Its cells were not recorded.")
                     + (f" {_gap_class(need, bounds)}." if bounds else ""))
    cold = [v["runs"]["cold"]["seconds"] for v in timings.values() if "cold" in v.get("runs", {})]
    if sum(cold) > suite_budget:
        need = sum(cold) / suite_budget
        untimed = [k for k, v in sorted(timings.items()) if "cold" not in v.get("runs", {})]
        lines.append(f"- The suite: the {len(cold)} notebooks timed cold need {need:.1f}× less time together"
                     + (f", and more with {', '.join(untimed)}, not timed cold yet." if untimed else ".")
                     # a partial total under a bound says nothing about the whole suite
                     + (f" {_gap_class(need, bounds)}." if bounds and (not untimed or need > bounds["practical_bound"])
                        else " Whether the bounds cover it waits for the untimed notebooks." if bounds else ""))
    return lines


def _suite_line(kinds: dict[str, dict[str, float]], mode: str, budget: float) -> str:
    """The suite's total of one kind of run against its budget; when some notebook has no such run,
    what the timed ones add up to (over budget already, if they are) and which are missing."""
    timed = {k: t[mode] for k, t in kinds.items() if mode in t}
    total = sum(timed.values())
    if len(timed) == len(kinds):
        return f"{total / 60:.0f} min against {budget / 60:.0f} min: **{'within budget' if total <= budget else 'over budget'}**."
    missing = ", ".join(k for k in kinds if k not in timed)
    over = f", **over budget already** by {(total - budget) / 60:.0f} min" if total > budget else ""
    return (f"not timed for every notebook (a `— ` above): the {len(timed)} timed add up to {total / 60:.0f} min against "
            f"{budget / 60:.0f} min{over}; not timed {mode}: {missing}.")


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
             f"Every number below was written by a notebook run (`python -m llgbm.run --profile {profile}`); nothing here is "
             "typed by hand. Each section names the commit its run came from and says when the code has changed since.", ""]
    lines += _run_summary(timings) + [""]
    claims = []
    for nb in notebooks:
        d = root / nb.stem
        if not (d / "metrics.json").exists():
            continue
        state = json.loads((d / "run.json").read_text()) if (d / "run.json").exists() else None
        lines += [f"## {_title(nb)}", "", f"Notebook: `notebooks/{nb.name}` · outputs: `{d.relative_to(root)}/`", "",
                  provenance_line(nb.stem, state), ""]
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
        lines += run_times(profile, timings) + usage.cold_code(timings) + usage.utilisation(timings, usage.bench_peak(root))
        lines += usage.peer_goals(root)
    lines += usage.artefact_table(root, [nb.stem for nb in notebooks])
    lines += ["## Claims ledger", ""]
    if claims:
        lines += ["| claim | source | measured verdict | evidence |", "|---|---|---|---|"]
        lines += [f"| {c['claim']} | {c['source']} | **{c['verdict']}** | {c['evidence']} |" for c in claims]
    else:
        lines += ["No notebook in this run has measured a seed claim yet."]
    path = root / "REPORT.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path
