"""Run the lab's notebooks through papermill in phase order, then write reports/<profile>/REPORT.md.

    python -m llgbm.run --profile quick                # every notebook
    python -m llgbm.run --profile smoke --only 00_baseline

The terminal shows live progress: the notebook, its cell out of how many, the elapsed time, and the
notebook's last recorded run time as an estimate. A failing notebook stops the run and prints the
failing cell's error; the executed copy (with outputs) is kept under reports/<profile>/_executed/."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from tqdm.auto import tqdm

from llgbm.core import flops
from llgbm.core.cli import add_debug
from llgbm.core.utils import PROFILES, REPO_ROOT, atomic_write_json, check_known, llgbm_home, machine
from llgbm.notebook.provenance import code_state
from llgbm.notebook.report import reports_root, write_report

NOTEBOOKS = REPO_ROOT / "notebooks"
KERNEL = "llgbm"
HISTORY = 4            # earlier runs kept per notebook in timings.json
USER_ERRORS = ("ParameterError",)   # a notebook error that is bad input, reported in its one line (--debug: traceback too)


class LocalKernelManager(AsyncKernelManager):
    """Kernels talk over IPC sockets in a private temporary folder: nothing listens on TCP, so the
    kernel has nothing to warn about ("running over TCP without encryption")."""

    def __init__(self, **kw):
        kw.setdefault("transport", "ipc")
        kw.setdefault("ip", str(Path(tempfile.mkdtemp(prefix="llgbm-kernel-")) / "kernel"))
        super().__init__(**kw)


def notebooks(only: list[str] | None = None) -> list[Path]:
    """Notebooks in phase order (00, 01, …, 04, 04b, 05, 10, …); `only` filters by stem."""
    found = sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    if only:
        stems = {p.stem for p in found}
        check_known(only, stems, "notebook(s)", error=SystemExit)
        found = [p for p in found if p.stem in only]
    return found


def _check_kernel(kernel: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager
    if kernel not in KernelSpecManager().find_kernel_specs():
        raise SystemExit(f"Jupyter kernel {kernel!r} is not installed; run `make setup` (it registers it), "
                         f"or pass --kernel with one of: {', '.join(KernelSpecManager().find_kernel_specs())}")


def cache_state(profile: str) -> dict:
    """What is already computed for a profile: finished zoo runs out of those planned, generator runs,
    DeltaCache entries. "cold" means nothing, "warm" a finished zoo."""
    from llgbm.core import models  # lazy: defers torch (the runner needs none)
    from llgbm.core.utils import check_profile  # lazy: defers torch (the runner needs none)
    from llgbm.teachers import zoo  # lazy: defers torch (the runner needs none)
    cfg = zoo.ZooConfig.preset(check_profile(profile))
    root = zoo.zoo_dir(profile, models.MODEL_FOR_PROFILE[profile], cfg)
    planned = len(cfg.task_names()) * len(cfg.seeds)
    finished = len(list(root.glob("*/seed*/run.json"))) if root.exists() else 0
    gens = llgbm_home() / "generators"
    runs = sum(1 for d in gens.glob("*-seed*-*") if any(d.glob("step_*.safetensors"))) if gens.exists() else 0
    manifest = Path(os.environ.get("LLGBM_DELTAS") or REPO_ROOT / "deltas") / "manifest.json"
    deltas = len(json.loads(manifest.read_text())) if manifest.exists() else 0
    state = "cold" if finished == 0 else ("warm" if finished >= planned else "partial")
    return dict(state=state, zoo_runs=finished, zoo_planned=planned, generator_runs=runs, cached_deltas=deltas)


def run_notebook(nb: Path, profile: str, kernel: str = KERNEL, timeout: int = 4 * 3600, progress: str | None = None,
                 **params) -> Path:
    """Execute one notebook with papermill; `progress` is the description of its live cell bar."""
    import papermill as pm
    out = reports_root() / profile / "_executed" / nb.name
    out.parent.mkdir(parents=True, exist_ok=True)
    # No per-cell rate or ETA: cells differ by minutes, so an estimate from the cells done so far goes
    # stale during a long one. The bar shows the cells done and the time elapsed (redrawn every few
    # seconds by `_ticking`); the description carries the last run's total as the estimate.
    bar = dict(desc=progress, unit="cell", file=sys.stderr, dynamic_ncols=True,
               bar_format="{desc}: {n_fmt}/{total_fmt} cells, {elapsed} elapsed") if progress else False
    with _ticking(enabled=bool(progress) and sys.stderr.isatty()):
        pm.execute_notebook(str(nb), str(out), parameters=dict(profile=profile, **params), kernel_name=kernel,
                            execution_timeout=timeout, cwd=str(nb.parent), progress_bar=bar,
                            kernel_manager_class=LocalKernelManager)
    return out


@contextlib.contextmanager
def _ticking(enabled: bool, every: float = 5.0):
    """Redraw the open progress bars every few seconds, so the elapsed time moves during a long cell
    (tqdm redraws only when a cell finishes). Only on a terminal: a log file gets no extra lines."""
    stop = threading.Event()

    def tick():
        while not stop.wait(every):
            for bar in list(getattr(tqdm, "_instances", ())):
                bar.refresh()
    thread = threading.Thread(target=tick, daemon=True)
    if enabled:
        thread.start()
    try:
        yield
    finally:
        stop.set()


def duration(seconds: float) -> str:
    """A run time for a person: seconds under two minutes, then minutes (one decimal under ten)."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    return f"{minutes:.1f} min" if minutes < 10 else f"{minutes:.0f} min"


# The folders under LLGBM_HOME that a notebook fills on its own (the zoo says nothing about them): its
# run is filed cold when they held no file at its start, warm when it wrote no new file there, partial
# otherwise (`own_mode`). Notebooks not listed are filed by the zoo's state (`suite_mode`).
OWN_CACHES = {"06_zeroshot": ("suite",), "10_igbundle": ("igbundle",), "11_calabi": ("calabi",),
              "12_coordinates": ("continual", "coordinates"), "13_inl": ("inl",)}


def cache_files(stem: str) -> frozenset[str] | None:
    """The files in a notebook's own cache folders (None: it has none listed)."""
    if stem not in OWN_CACHES:
        return None
    home = llgbm_home()
    return frozenset(str(p.relative_to(home)) for d in OWN_CACHES[stem] if (home / d).exists()
                     for p in (home / d).rglob("*") if p.is_file())


def own_mode(before: frozenset[str], after: frozenset[str]) -> str:
    """cold (nothing cached at the start), warm (nothing new written: every result read back) or partial."""
    return "cold" if not before else ("warm" if after <= before else "partial")


def suite_mode(state: dict) -> str:
    """How warm the cache was when a suite run started: "cold" (no teacher and no generator run yet:
    an empty ~/.cache/llgbm; the committed deltas/ do not count), "warm" (the zoo finished and
    generators trained: a rerun), or "partial" (anything between)."""
    if state["zoo_runs"] == 0 and state["generator_runs"] == 0:
        return "cold"
    return "warm" if state["state"] == "warm" and state["generator_runs"] > 0 else "partial"


def artefact_mode(profile: str, stem: str, fallback: str) -> str:
    """How a notebook without its own cache folders ran, from the artefacts it recorded (its
    artefacts.json, `llgbm.core.artefacts`): "cold" when it trained artefacts and read back only ones
    that an earlier notebook (phase order) also uses, "partial" when it read back one of its own
    too; `fallback` (the suite's mode at the start) when it trained none. So 04, 04b and 05 run over
    00's zoo and generator runs file cold when their own generator runs were all trained."""
    def record(name: str) -> dict:
        path = reports_root() / profile / name / "artefacts.json"
        return json.loads(path.read_text()) if path.exists() else {}
    mine, order = record(stem), [p.stem for p in notebooks()]
    if not any(row.get("trained") for row in mine.values()):
        return fallback
    earlier = set().union(*(record(name) for name in order[:order.index(stem)])) if stem in order else set()
    return "partial" if any(not row.get("trained") and key not in earlier for key, row in mine.items()) else "cold"


def stage_clock_cold(profile: str, stem: str) -> tuple[float, str] | None:
    """(seconds, note) of a notebook's cold total as its own stage clock kept it (06: every stage's
    first run, summed over the sittings it took; metrics `cold_minutes`, `cold_split`), or None. A
    run that read stages back is not cold, but this total is its cold time."""
    path = reports_root() / profile / stem / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    if metrics.get("cold_minutes") is None:
        return None
    split = ("; stages split across sittings count the work lost at each stop twice (it errs high)"
             if metrics.get("cold_split") else "")
    return 60 * float(metrics["cold_minutes"]), (f"the cold total from the notebook's stage clock: every stage's first run, "
                                                f"summed over the sittings it took{split}; FLOPs not counted in every sitting")


def cell_seconds(executed: Path | str, top: int = 5) -> list[dict]:
    """The `top` slowest code cells of an executed notebook (papermill's per-cell durations): cell
    index, seconds and the cell's first line, slowest first."""
    nb = json.loads(Path(executed).read_text())
    cells = [dict(cell=i, seconds=round(float(c["metadata"]["papermill"]["duration"]), 1),
                  code="".join(c["source"]).strip().splitlines()[0][:70] if "".join(c["source"]).strip() else "")
             for i, c in enumerate(nb["cells"])
             if c["cell_type"] == "code" and c.get("metadata", {}).get("papermill", {}).get("duration") is not None]
    return sorted(cells, key=lambda c: -c["seconds"])[:top]


def record_timing(profile: str, stem: str, seconds: float, state: dict | None = None, mode: str | None = None,
                  note: str | None = None, cells: list[dict] | None = None, counted: dict | None = None,
                  code: dict | None = None, peak: float | None = None) -> None:
    """Wall time of each notebook's latest run, with the cache state it started from, kept across
    partial reruns (`--only`). `mode` (suite_mode at the start of the whole run, or own_mode for a
    notebook with its own caches) also files it as
    that notebook's latest cold, warm or partial run, so the report can show both kinds. `note` says
    what else to know about the run (the report prints it under the run-times table); `cells` its
    slowest cells (`cell_seconds`), where the minutes went; `counted` the FLOPs its kernel counted
    (`llgbm.core.flops`: flops, seconds counted), for the suite's use of the peak; `code` the commit it ran
    (`provenance.code_state`), so a cold time from older code can be told apart; `peak` the fp32 matmul FLOP/s the
    runner measured just before (`timing.measure_matmul_peak`): it differs between machines with the same CPU name
    and over time on one (a shared host)."""
    path = reports_root() / profile / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    entry = dict(seconds=round(seconds, 1), finished=time.strftime("%Y-%m-%d %H:%M:%S %Z"), machine=machine(),
                 **({"start_state": state} if state else {}), **({"note": note} if note else {}),
                 **({"cells": cells} if cells else {}),
                 **({"flops": counted["flops"], "flops_seconds": counted["seconds"]} if counted else {}),
                 **({"peak_flops_per_s": round(peak)} if peak else {}),
                 **({"commit": code["commit"], "dirty": code["dirty"]} if code and code.get("commit") else {}))
    atomic_write_json(path, file_timing(timings, stem, entry, mode))


def file_timing(timings: dict, stem: str, entry: dict, mode: str | None = None, keep: int = HISTORY) -> dict:
    """`timings` with `entry` filed as `stem`'s latest run (and its latest `mode` run). The run of the
    same mode it replaces moves to the notebook's `history` (its seconds, when it finished and its
    note; the newest `keep`), so the report can say how a number moved and why."""
    old = timings.get(stem, {})
    runs, history = dict(old.get("runs", {})), list(old.get("history", []))
    latest = {k: v for k, v in entry.items() if k not in ("runs", "history")}
    if mode is not None:
        if mode in runs:
            history.append(dict(mode=mode, **{k: runs[mode][k] for k in ("seconds", "finished", "machine", "note", "commit")
                                              if k in runs[mode]}))
        runs[mode] = dict(latest)
    return dict(timings, **{stem: dict(latest, **({"runs": runs} if runs else {}),
                                       **({"history": history[-keep:]} if history else {}))})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=PROFILES, default="quick")
    ap.add_argument("--only", nargs="*", help="notebook stems to run (default: all)")
    ap.add_argument("--kernel", default=KERNEL)
    ap.add_argument("--note", default=None, help="a note filed with each notebook's timing, e.g. what else shared the CPU")
    ap.add_argument("--timeout", type=int, default=4 * 3600, help="per-cell execution timeout, seconds (a cold quick cell of 06 trains for over an hour on 2 cores)")
    add_debug(ap)
    args = ap.parse_args(argv)
    import papermill as pm

    from llgbm.core.timing import measure_matmul_peak  # lazy: argument errors answer before torch loads

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _check_kernel(args.kernel)
    selected = notebooks(args.only)
    path = reports_root() / args.profile / "timings.json"
    last = json.loads(path.read_text()) if path.exists() else {}
    t_all = time.time()
    mode = suite_mode(cache_state(args.profile))
    peak = measure_matmul_peak(trials=3)           # now, filed with each run: it varies by machine and hour
    print(f"[llgbm.run] {len(selected)} notebook(s), {args.profile}, starting from a {mode} cache", flush=True)
    for i, nb in enumerate(selected, 1):
        state = cache_state(args.profile)
        estimate = f", last run {duration(last[nb.stem]['seconds'])}" if nb.stem in last else ""
        print(f"[llgbm.run] {i}/{len(selected)} {nb.name} ({args.profile}; zoo {state['state']}{estimate})", flush=True)
        t0, own, code = time.time(), cache_files(nb.stem), code_state(nb.stem)
        try:
            run_notebook(nb, args.profile, args.kernel, args.timeout, progress=f"{nb.stem}{estimate}")
        except pm.PapermillExecutionError as e:
            print(f"[llgbm.run] {nb.name} FAILED in cell {e.exec_count}: {e.ename}: {' '.join(str(e.evalue).split())}", file=sys.stderr)
            if args.debug or e.ename not in USER_ERRORS:       # a bad parameter is the user's: its line says it all
                print("".join(e.traceback[-3:]) if e.traceback else "", file=sys.stderr)
            print(f"[llgbm.run] executed copy: {reports_root() / args.profile / '_executed' / nb.name}", file=sys.stderr)
            return 1
        seconds = time.time() - t0
        filed = artefact_mode(args.profile, nb.stem, mode) if own is None else own_mode(own, cache_files(nb.stem))
        clock, known = stage_clock_cold(args.profile, nb.stem), last.get(nb.stem, {}).get("runs", {}).get("cold", {})
        if clock and filed != "cold" and abs(known.get("seconds", -1.0) - clock[0]) > 1:   # its cold total, filed once
            record_timing(args.profile, nb.stem, clock[0], None, "cold", clock[1], code=code)
        record_timing(args.profile, nb.stem, seconds, state, filed, args.note,
                      cell_seconds(reports_root() / args.profile / "_executed" / nb.name),
                      flops.read(reports_root() / args.profile / nb.stem / "flops.json"), code, peak)
        print(f"[llgbm.run] {nb.name} done in {seconds / 60:.1f} min (total {(time.time() - t_all) / 60:.1f} min)", flush=True)
    path = write_report(args.profile, notebooks())
    print(f"[llgbm.run] report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
