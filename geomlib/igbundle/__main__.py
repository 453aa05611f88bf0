"""The seed's commands:

    python -m geomlib.igbundle train --config geomlib/configs/igbundle_smollm2.yaml [--max-steps N] [--report FILE]
    python -m geomlib.igbundle verify --checkpoint DIR
    python -m geomlib.igbundle validate --checkpoint DIR
    python -m geomlib.igbundle chat --checkpoint DIR [--port 7860]"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m geomlib.igbundle", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="verb", required=True)
    t = sub.add_parser("train", help="train adapters (resumes an interrupted run)")
    t.add_argument("--config", required=True)
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--output-dir", default=None)
    t.add_argument("--report", default=None, help="write a JSON summary (steps, seconds per step, peak RSS) here")
    for verb in ("verify", "validate", "chat"):
        p = sub.add_parser(verb)
        p.add_argument("--checkpoint", required=True)
        if verb == "chat":
            p.add_argument("--port", type=int, default=7860)
    args = ap.parse_args(argv)

    from . import host  # lazy: fast --help (defers torch)
    if args.verb == "verify":
        try:
            meta = host.verify(args.checkpoint)
        except ValueError as e:
            print(f"checkpoint INVALID: {e}", file=sys.stderr)
            return 1
        print(f"checkpoint OK: {args.checkpoint} ({meta['kind']}, {len(meta['shapes'])} tensors, all finite, shapes as listed)")
        return 0
    if args.verb == "train":
        from llgbm.core.timing import rss_mb  # lazy: fast --help (defers torch)

        from .train import IGTrainConfig, train  # lazy: fast --help (defers torch)
        rss_imports = rss_mb()              # after the imports, before the model: what training itself adds is above it
        overrides = {k: v for k, v in dict(max_steps=args.max_steps, output_dir=args.output_dir).items() if v is not None}
        cfg = IGTrainConfig.from_yaml(args.config, **overrides)
        res = train(cfg)
        h = res["history"]
        summary = dict(run_dir=str(res["run_dir"]), steps=len(h["loss"]), resumed_from=res["resumed_from"],
                       final_loss=h["loss"][-1] if h["loss"] else None, trainable_params=res["params"],
                       seconds_per_step=statistics.median(h["seconds"][res["resumed_from"]:] or [float("nan")]),
                       peak_rss_mb=res["peak_rss_mb"], rss_after_imports_mb=rss_imports,
                       peak_above_imports_mb=res["peak_rss_mb"] - rss_imports, load_in_4bit=cfg.load_in_4bit)
        if args.report:
            Path(args.report).write_text(json.dumps(summary, indent=1))
        print(json.dumps(summary, indent=1))
        return 0
    from .app import load_checkpoint, serve, validate  # lazy: fast --help (defers torch)
    model, tok, _ = load_checkpoint(args.checkpoint)
    if args.verb == "validate":
        out = validate(model, tok)
        for row in out["rows"]:
            print(f"--- {row['prompt']!r}\n  base:     {row['base']!r}\n  igbundle: {row['igbundle']!r}")
        print(f"Average internal sigma (mean component width): {out['average_sigma']:.4f}")
        return 0
    print(f"serving the chat UI at http://127.0.0.1:{args.port}")
    serve(model, tok, args.port, block=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
