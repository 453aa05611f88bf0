"""REPORT sections on what the suite spends (issue 30): the trained artefacts and the notebooks that
use them (each one trained once, a run two notebooks need being the same cached run), the share of
the machine's fp32 peak that the notebooks' counted FLOPs reach over their wall time, and the
performance goals against the tools a user would use instead (the bench's peer rows)."""
from __future__ import annotations

import json
from pathlib import Path

from llgbm.core import artefacts
from llgbm.notebook import provenance


def _short(stem: str) -> str:
    return stem.split("_")[0]


def artefact_rows(root: Path, stems: list[str]) -> list[dict]:
    """One row per group of artefacts of one kind that the same notebooks use and the same notebooks
    trained (in their latest runs): the count, the training seconds recorded, the notebooks, and
    whether the trainings were the same work twice (`twice`: their step spans overlap, or one trained
    it whole) or a later notebook continuing an earlier one's run from its checkpoint (not twice)."""
    seen: dict[str, dict] = {}
    for stem in stems:
        for key, row in artefacts.read(Path(root) / stem / "artefacts.json").items():
            a = seen.setdefault(key, dict(kind=row["kind"], used=[], trained=[], spans=[], seconds=0.0))
            a["used"].append(stem)
            if row["trained"]:
                a["trained"].append(stem)
                a["spans"].append(row.get("steps"))
                a["seconds"] += row.get("seconds") or 0.0
    groups: dict[tuple, dict] = {}
    for a in seen.values():
        g = groups.setdefault((a["kind"], tuple(a["used"]), tuple(a["trained"]), artefacts.overlap(a["spans"])),
                              dict(count=0, seconds=0.0))
        g["count"] += 1
        g["seconds"] += a["seconds"]
    return [dict(kind=k, used_by=list(u), trained_in=list(t), twice=w, **g) for (k, u, t, w), g in sorted(groups.items())]


def _trained_in(row: dict) -> str:
    names = ", ".join(map(_short, row["trained_in"]))
    if len(row["trained_in"]) < 2:
        return names or "— (read back)"
    return names + (" (**the same steps twice**)" if row["twice"] else " (continued: each later one from the checkpoint before)")


def artefact_table(root: Path, stems: list[str]) -> list[str]:
    """The artefact section: a table of `artefact_rows` and what it says about work done twice."""
    rows = artefact_rows(root, stems)
    lines = ["## Trained artefacts", ""]
    if not rows:
        return lines + ["No notebook run has recorded its trained artefacts yet (runs from before `llgbm.core.artefacts`).", ""]
    recorded = [s for s in stems if (Path(root) / s / "artefacts.json").exists()]
    lines += ["Every trained artefact (teacher, generator run, multi-task LoRA, continual-learning, IGBundle or INL run, "
              "recovered compressed model) that a notebook's latest run trained or read back from the cache, grouped by "
              "the notebooks that use it. *Trained in* names the runs that trained it; empty where every run read it back "
              "(trained by an earlier run). A run that a later notebook trains longer (05 continuing 04b's delta-only runs) "
              "is trained by both, over different steps (each run files the steps it took): not work done twice. "
              "Notebooks recording: " + ", ".join(_short(s) for s in recorded) + ".", "",
              "| kind | artefacts | used by | trained in (latest runs) | training time (s) |", "|---|---|---|---|---|"]
    lines += [f"| {r['kind']} | {r['count']} | {', '.join(map(_short, r['used_by']))} | {_trained_in(r)} | "
              f"{r['seconds']:.0f} |" for r in rows]
    twice = sum(r["count"] for r in rows if r["twice"])
    continued = sum(r["count"] for r in rows if len(r["trained_in"]) > 1 and not r["twice"])
    shared = sum(r["count"] for r in rows if len(r["used_by"]) > 1)
    total = sum(r["count"] for r in rows)
    lines += ["", f"- {total} artefacts; {shared} used by more than one notebook (the same cached run); "
              f"{continued} trained further by a later notebook from an earlier one's checkpoint; "
              f"{twice} trained over the same steps by more than one notebook's latest run"
              + (" (work done twice: **a defect**)." if twice else ".")]
    missing = [s for s in stems if s not in recorded]
    if missing:
        lines.append("- Not recorded (no run since artefacts were recorded): " + ", ".join(missing) + ".")
    return lines + [""]


def bench_peak(root: Path) -> tuple[float, str] | None:
    """(fp32 peak FLOP/s, the machine) measured by the bench of this profile (bench.json), if any."""
    path = Path(root) / "bench.json"
    if not path.exists():
        return None
    bench = json.loads(path.read_text())
    if not bench.get("peak_flops_per_s"):
        return None
    return bench["peak_flops_per_s"], bench.get("machine", "its machine (not recorded)")


def utilisation(timings: dict, peak: tuple[float, str] | None) -> list[str]:
    """Per notebook, its latest cold run's counted FLOPs against its wall time, as a share of the fp32
    peak measured on its own machine (the runner files it with each run: machines with the same CPU
    name differ) or, for runs from before that, the bench's; and the suite's: the counted cold runs'
    FLOPs over what their machines could have done in their wall time (Σ seconds × peak)."""
    lines = ["## Use of the machine's peak", ""]
    cold = {k: v["runs"]["cold"] for k, v in sorted(timings.items()) if "flops" in v.get("runs", {}).get("cold", {})}
    latest = {k: v for k, v in sorted(timings.items()) if "flops" in v}
    if not latest and not cold:
        return lines + ["No run has counted its FLOPs yet (`llgbm.core.flops`, counted from the runs after it landed).", ""]
    rate = (lambda r: r["flops"] / r["seconds"])
    own = (lambda r: r.get("peak_flops_per_s") or (peak[0] if peak else None))
    fraction = (lambda r: f"{rate(r) / own(r):.3f}" if own(r) else "n/a")
    where = (lambda r: f"{own(r) / 1e9:.0f} ({'own' if r.get('peak_flops_per_s') else 'bench'})" if own(r) else "n/a")
    lines += ["FLOPs as each notebook's kernel counted them (`llgbm.core.flops`: every `nn.Linear` forward and the backward it "
              "implies; padding counts as work done, attention scores and subprocesses are not counted), over the run's wall "
              "time, as a share of the fp32 matmul peak of the machine it ran on: **own** where the runner measured it before "
              "the run, else the bench's" + (f" ({peak[0] / 1e9:.0f} GFLOP/s on {peak[1]}), a guess for runs at another "
                                             "machine or hour: the peak measured on CPUs of one name varies between "
                                             "machines and over time on one." if peak else "; no bench.json gives one."), "",
              "| notebook | run | wall (s) | counted TFLOP | GFLOP/s | peak GFLOP/s | share of peak |", "|---|---|---|---|---|---|---|"]
    row = (lambda k, label, r: f"| {k} | {label} | {r['seconds']:.0f} | {r['flops'] / 1e12:.2f} | {rate(r) / 1e9:.1f} | "
                               f"{where(r)} | {fraction(r)} |")
    for k in sorted({*cold, *latest}):
        if k in cold:
            lines.append(row(k, "cold", cold[k]))
        if k in latest and (k not in cold or not _same(cold[k], latest[k])):
            lines.append(row(k, f"latest ({_mode(latest[k])})", latest[k]))
    untimed = [k for k in timings if k not in cold]
    if cold:
        flops, seconds = sum(r["flops"] for r in cold.values()), sum(r["seconds"] for r in cold.values())
        known = all(own(r) for r in cold.values())
        ratio = flops / sum(r["seconds"] * own(r) for r in cold.values()) if known else None
        share = (f"{ratio:.3f} of the peak (goal: {PEAK_GOAL}: " + ("**met**" if ratio >= PEAK_GOAL else "**not met**") + ")"
                 if known else f"its share of the peak unknown (no bench.json; goal: {PEAK_GOAL})")
        guessed = [_short(k) for k, r in cold.items() if not r.get("peak_flops_per_s")]
        lines += ["", f"- The cold runs with counted FLOPs ({', '.join(map(_short, cold))}): {flops / 1e12:.1f} TFLOP in "
                  f"{seconds / 60:.0f} min, {flops / seconds / 1e9:.1f} GFLOP/s, {share}"
                  + (f"; against the bench's peak for {', '.join(guessed)} (their machines' own not recorded)." if guessed and known
                     else ".")]
    if untimed:
        lines.append("- No counted cold run yet (the suite's share waits for them): " + ", ".join(untimed) + ".")
    return lines + [""]


def cold_code(timings: dict) -> list[str]:
    """Whether each notebook's cold time was measured on the code it runs now: a cold run at a commit
    whose code (`provenance.code_files`) changed since may not hold any more (a notebook that grew
    takes longer cold than its last cold run says); runs from before runs recorded their commit are
    named apart."""
    lines, unrecorded = [], []
    for k, v in sorted(timings.items()):
        run = v.get("runs", {}).get("cold")
        if run is None:
            continue
        if not run.get("commit"):
            unrecorded.append(_short(k))
            continue
        changed = provenance.changed_since(run["commit"], k)
        if changed is None:
            lines.append(f"- {k}: its cold run's commit {run['commit'][:10]} is not in this checkout's history.")
        elif changed or run.get("dirty"):
            lines.append(f"- {k}: its cold time ({run['seconds']:.0f} s) was measured at {run['commit'][:10]}"
                         + (" with uncommitted changes" if run.get("dirty") else "")
                         + f"; {len(changed)} file(s) of the code it runs changed since: the time may not hold for the code now.")
    if unrecorded:
        lines.append(f"- Cold runs from before runs recorded their commit ({', '.join(unrecorded)}): whether their code changed "
                     "since is not known.")
    return ["**Cold times and the code now.**", *lines, ""] if lines else []


TEACHER_GOAL, SCORING_GOAL, SCORING_K, GENERATION_GOAL, PEAK_GOAL = 1.3, 2.0, 8, 1000.0, 0.5   # issue 30's goals


def peer_goals(root: Path) -> list[str]:
    """Issue 30's goals against the peers, each met or not, from bench.json's peer rows (one bench
    run, one machine): teacher tokens/s against Trainer + peft at equal final loss, scoring 8 adapters
    against peft's mixed batch with equal scores, and a generated adapter end to end against one teacher."""
    path = Path(root) / "bench.json"
    bench = json.loads(path.read_text()) if path.exists() else {}
    lines = ["## Performance against the tools a user would use instead", ""]
    if not any(k in bench for k in ("peer_teacher", "peer_scoring", "peer_generation")):
        return lines + ["No bench run with peers yet: `python -m llgbm.bench --profile quick --peers`.", ""]
    word = (lambda ok: "**met**" if ok else "**not met**")
    lines.append(f"From `python -m llgbm.bench --peers` (bench.md: both sides of every row), on {bench.get('machine', 'an unrecorded machine')}.")
    rows = {r["index"]: r for r in bench.get("peer_teacher", [])}
    if {"zoo loop", "Trainer + peft"} <= set(rows):
        ours, peer = rows["zoo loop"], rows["Trainer + peft"]
        ratio, loss = ours["tokens_per_s"] / peer["tokens_per_s"], ours["final_loss"] / peer["final_loss"]
        lines.append(f"- Teacher training ≥ {TEACHER_GOAL}× Trainer + peft tokens/s at equal final loss: {word(ratio >= TEACHER_GOAL and abs(loss - 1) < 1e-3)}"
                     f", {ratio:.2f}× ({ours['tokens_per_s']:.1f} vs {peer['tokens_per_s']:.1f} tokens/s; final loss ratio {loss:.6f}).")
    scoring = {r["index"]: r for r in bench.get("peer_scoring", []) if r.get("adapters") == SCORING_K}
    if {"shared forwards (ours)", "peft mixed batch"} <= set(scoring):
        ours, peer = scoring["shared forwards (ours)"], scoring["peft mixed batch"]
        ratio, diff = ours["items_per_s"] / peer["items_per_s"], peer["max_abs_diff"]
        lines.append(f"- Scoring {SCORING_K} adapters ≥ {SCORING_GOAL:.0f}× peft's mixed batch, same scores: {word(ratio >= SCORING_GOAL and diff < 1e-4)}"
                     f", {ratio:.2f}× ({ours['items_per_s']:.1f} vs {peer['items_per_s']:.1f} items/s; scores {diff:.1e} apart at most).")
    gen = {r["index"]: r for r in bench.get("peer_generation", [])}
    warm = next((r for k, r in gen.items() if k.startswith("end to end, warm")), None)
    if warm:
        stages = ", ".join(f"{k} {r['seconds'] * 1e3:.0f} ms" for k, r in gen.items()
                           if not k.startswith("end to end") and k != "one teacher (training)")
        lines.append(f"- A generated adapter ≥ {GENERATION_GOAL:.0f}× cheaper than training one teacher, end to end: "
                     f"{word(warm['times_cheaper_than_teacher'] >= GENERATION_GOAL)}, {warm['times_cheaper_than_teacher']:.0f}× "
                     f"({warm['seconds'] * 1e3:.0f} ms warm; {stages}){_floor(warm, gen)}.")
    return lines + [""]


def _floor(warm: dict, gen: dict) -> str:
    """Whether the goal is within reach of this work at all: its counted FLOPs at the fp32 peak against
    the time 1000× cheaper than the teacher allows (bench rows without FLOPs: nothing to say)."""
    floor, teacher = warm.get("ms at the fp32 peak"), gen.get("one teacher (training)", {}).get("seconds")
    if floor is None or floor != floor or not teacher:
        return ""
    allowed = teacher / GENERATION_GOAL * 1e3
    return (f"; its counted FLOPs ({warm['GFLOP']:.1f} GFLOP) take {floor:.1f} ms even at the fp32 peak, against the "
            f"{allowed:.1f} ms the goal allows: " + ("within reach of faster code" if floor < allowed else
                                                     "**out of reach on this machine without less work** (fewer or shorter "
                                                     "prompts to encode, a smaller generator)"))


def _mode(entry: dict) -> str:
    return next((m for m, r in entry.get("runs", {}).items() if _same(r, entry)), "unfiled")


def _same(run: dict, other: dict) -> bool:
    """The same run: finished at the same time with the same wall time (a stage clock's cold total is
    filed in the second its sitting finishes, with other seconds)."""
    return run.get("finished") == other.get("finished") and run.get("seconds") == other.get("seconds")
