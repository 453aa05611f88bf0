"""`python -m llgbm.bench --profile quick`: the hot paths (llgbm.bench.hotpaths) measured in one run,
written to reports/<profile>/bench.md and bench.json."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from llgbm.core import cli


def main(argv: list[str] | None = None) -> int:
    """`python -m llgbm.bench --profile quick`: every hot path's time, FLOP/s and fraction of the fp32
    matmul peak measured in the same run, the operator profile of a zoo step, and where the last
    suite run spent its minutes; written to reports/<profile>/bench.md (and bench.json)."""
    p = argparse.ArgumentParser(description=main.__doc__.split(";")[0])
    p.add_argument("--profile", default="quick", choices=("smoke", "quick", "full"))
    p.add_argument("--model", default=None, help="model preset or folder (default: the profile's)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per hot path (the median is reported)")
    p.add_argument("--out", default=None, help="markdown file (default: reports/<profile>/bench.md)")
    cli.add_debug(p)
    p.add_argument("--compile", action="store_true",
                   help="also time the training paths (a zoo step, a kd generator step) under torch.compile")
    p.add_argument("--peers", action="store_true",
                   help="also time the tools a user would use instead: Trainer + peft for a teacher, peft's mixed-batch "
                        "and one-at-a-time scoring of 4/8/16 adapters, and a generated adapter end to end against a teacher")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be ≥ 1, got {args.repeats}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import pandas as pd
    import torch

    from llgbm.bench import hotpaths  # lazy: --help and argument errors answer before torch loads
    from llgbm.core.tasks import get_task  # lazy: as above
    from llgbm.core.timing import machine, measure_matmul_peak  # lazy: as above
    from llgbm.core.utils import atomic_write_bytes, atomic_write_json  # lazy: as above
    from llgbm.lab.experiment import GeneratorLab  # lazy: as above
    from llgbm.notebook.report import reports_root  # lazy: as above
    try:
        lab = GeneratorLab.load(args.profile, args.model)
    except FileNotFoundError as e:
        raise cli.CommandError(f"{cli.message(e)}; the bench times the generator on the profile's zoo: build it with "
                               f"`python -m llgbm.zoo --profile {args.profile}` first") from None
    threads = torch.get_num_threads()
    peak = measure_matmul_peak()
    paths = hotpaths.hot_paths(lab, args.repeats)
    runs = None
    if args.compile:
        paths += hotpaths.compiled_paths(lab, args.repeats)
        runs = hotpaths.teacher_runs(lab, lab.training_tasks[:3], peak)
    peer = None
    if args.peers:
        from llgbm.bench import peers  # lazy: as above
        peer = peers.peer_tables(lab, items=8 if args.profile == "smoke" else 64, repeats=max(3, args.repeats))
    peak = max(peak, measure_matmul_peak())       # the peak before and after: the better one
    if peer is not None:
        peer["generation"]["ms at the fp32 peak"] = peer["generation"]["GFLOP"] * 1e12 / peak
    if runs is not None:
        runs["fraction of peak"] = runs["model GFLOP/s"] * 1e9 / peak
    ops, kinds = hotpaths.op_profile(lab.model, lab.tokenizer, lab.zoo_cfg, get_task(lab.training_tasks[0]))
    notebooks, cells = hotpaths.suite_breakdown(args.profile)
    out = Path(args.out) if args.out else reports_root() / args.profile / "bench.md"
    table = pd.DataFrame([p.row(peak) for p in paths]).set_index("hot path")
    text = "\n\n".join([
        f"# Hot paths ({args.profile}, {lab.model_name}, {threads} threads, on {machine()})",
        f"fp32 matmul peak measured in this run: **{peak / 1e9:.0f} GFLOP/s** (best of 2048² matmuls, before and "
        f"after the paths). FLOPs are counted by torch's FlopCounterMode (matmuls and attention, padding included); "
        f"\"useful\" keeps only the real tokens' share. Median of {args.repeats} calls. Written by "
        f"`python -m llgbm.bench --profile {args.profile}{' --compile' if args.compile else ''}{' --peers' if args.peers else ''}`."
        + (" Rows marked *compiled* run the decoder stack under torch.compile (inductor, llgbm.core.compiling): their "
           "FLOPs are the eager call's, and the first call, which compiles, is left out of the median and noted."
           if args.compile else ""),
        table.to_markdown(floatfmt=".3g"),
        *([] if runs is None else [
            "## Whole teacher runs, eager and compiled (the zoo's own batches, one after the other in this process)",
            "The zoo's measure: tokens/s of real tokens and its fraction of the peak above (4 FLOPs per body parameter "
            "per token, plus the head at answer positions). The first compiled run pays the compile, and a recompile "
            "when a second batch length shows up.",
            runs.to_markdown(floatfmt=".3g")]),
        *([] if peer is None else [
            "## Peers: the tools a user would use instead (same model, data, threads; one after the other in this process)",
            "One teacher, the zoo's loop against transformers' Trainer + peft (same LoRA init, batches in the same order, "
            "AdamW, warmup, no clipping): tokens/s of real tokens and the mean loss of the last 5 steps.",
            peer["teacher"].to_markdown(floatfmt=".4g"),
            "Scoring K adapters on the same test items (gold log-likelihood): our shared forwards against peft's mixed batch "
            "(`adapter_names=`) and peft one adapter at a time; items/s counts items × adapters, max_abs_diff is the largest "
            "score difference from ours.",
            peer["scoring"].to_markdown(floatfmt=".4g"),
            "A generated adapter (prompts to a peft folder on disk) against training the teacher above: seconds, how many "
            "times cheaper than that teacher, and each stage's counted FLOPs with the time they would take at the peak above "
            "(the floor for this work on this machine: 1000× cheaper than the teacher needs the end-to-end row under "
            f"{peer['generation'].loc['one teacher (training)', 'seconds']:.3g} ms).",
            peer["generation"].to_markdown(floatfmt=".4g")]),
        "## Where a zoo training step spends its time (torch.profiler, self CPU time per step)",
        kinds.to_markdown(floatfmt=".3g"), ops.to_markdown(floatfmt=".3g"),
        f"## Where the last {args.profile} suite run spent its minutes",
        "Each notebook's last recorded wall time (reports/<profile>/timings.json; `start` is the cache state it "
        "started from), then the slowest cells of the executed notebooks (papermill's cell durations).",
        notebooks.to_markdown(floatfmt=".3g") if len(notebooks) else "(no suite run recorded)",
        cells.to_markdown(floatfmt=".3g") if len(cells) else "(no executed notebooks)",
    ]) + "\n"
    atomic_write_bytes(out, text.encode())
    atomic_write_json(out.with_suffix(".json"), dict(profile=args.profile, model=lab.model_name, threads=threads, machine=machine(),
                                                     **hotpaths.as_json(paths, peak),
                                                     **({} if runs is None else {"teacher_runs": runs.reset_index().to_dict("records")}),
                                                     **({} if peer is None else {f"peer_{k}": v.reset_index().to_dict("records")
                                                                                 for k, v in peer.items()})))
    print(text)
    print(f"[llgbm.bench] wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
