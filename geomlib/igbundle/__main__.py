"""The seed's commands:

    python -m geomlib.igbundle train --config geomlib/configs/igbundle_tiny.yaml [--max-steps N] [--report FILE]
    python -m geomlib.igbundle verify --checkpoint DIR
    python -m geomlib.igbundle validate --checkpoint DIR
    python -m geomlib.igbundle chat --checkpoint DIR [--port 7860]

igbundle_tiny.yaml trains on the tiny random model in seconds (a first try); igbundle_smollm2.yaml is
the SmolLM2 run of notebook 10. Checkpoints are verified before anything loads. An expected error is
one line on stderr (exit 2); --debug shows the traceback."""
from __future__ import annotations

import json
import socket
import statistics
import sys
from pathlib import Path

from llgbm.core import cli


def parse(argv: list[str]):
    ap = cli.parser("python -m geomlib.igbundle", __doc__)
    sub = ap.add_subparsers(dest="verb", required=True)
    t = cli.add_debug(sub.add_parser("train", help="train adapters (resumes an interrupted run)"))
    t.add_argument("--config", required=True)
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--output-dir", default=None)
    t.add_argument("--report", default=None, help="write a JSON summary (steps, seconds per step, peak RSS) here")
    for verb in ("verify", "validate", "chat"):
        p = cli.add_debug(sub.add_parser(verb))
        p.add_argument("--checkpoint", required=True)
        if verb == "chat":
            p.add_argument("--port", type=int, default=7860)
    args = ap.parse_args(argv)
    if args.verb == "train":
        cli.input_file(args.config, "--config")
        if args.max_steps is not None and args.max_steps < 1:
            raise cli.CommandError(f"--max-steps must be ≥ 1, got {args.max_steps}")
        if args.output_dir:
            cli.output_dir(args.output_dir, "--output-dir")
        if args.report:
            cli.output_file(args.report, "--report")
    else:
        ckpt = Path(args.checkpoint)
        if not ckpt.exists():
            raise cli.CommandError(f"--checkpoint {ckpt} does not exist: pass a checkpoint-N folder of a train run")
        if not ckpt.is_dir():
            raise cli.CommandError(f"--checkpoint {ckpt} is a file: pass the checkpoint-N folder that holds it")
    if args.verb == "chat":
        check_port(args.port)
    return args


def check_port(port: int) -> None:
    """A CommandError unless 127.0.0.1:`port` can be bound now (checked before the model loads)."""
    if not 1 <= port <= 65535:
        raise cli.CommandError(f"--port must be between 1 and 65535, got {port}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise cli.CommandError(f"port {port} on 127.0.0.1 is in use: pass another one with --port") from None


def main(argv: list[str]) -> int:
    args = parse(argv)
    from . import host  # lazy: fast --help (defers torch)
    if args.verb == "verify":
        try:
            meta = host.verify(args.checkpoint)
        except ValueError as e:
            raise cli.CommandError(f"checkpoint INVALID: {e}") from None
        print(f"checkpoint OK: {args.checkpoint} ({meta['kind']}, {len(meta['shapes'])} tensors, all finite, shapes as listed)")
        return 0
    if args.verb == "train":
        from llgbm.core.timing import rss_mb  # lazy: fast --help (defers torch)

        from .train import IGTrainConfig, train  # lazy: fast --help (defers torch)
        overrides = {k: v for k, v in dict(max_steps=args.max_steps, output_dir=args.output_dir).items() if v is not None}
        cfg = IGTrainConfig.from_yaml(args.config, **overrides)
        rss_imports = rss_mb()              # after the imports, before the model: what training itself adds is above it
        res = train(cfg)
        h = res["history"]
        timed = h["seconds"][res["resumed_from"]:]
        summary = dict(run_dir=str(res["run_dir"]), steps=len(h["loss"]), resumed_from=res["resumed_from"],
                       final_loss=h["loss"][-1] if h["loss"] else None, trainable_params=res["params"],
                       seconds_per_step=statistics.median(timed) if timed else None,   # None: nothing left to train
                       peak_rss_mb=res["peak_rss_mb"], rss_after_imports_mb=rss_imports,
                       peak_above_imports_mb=res["peak_rss_mb"] - rss_imports, load_in_4bit=cfg.load_in_4bit)
        text = json.dumps(summary, indent=1, allow_nan=False)
        if args.report:
            Path(args.report).parent.mkdir(parents=True, exist_ok=True)
            Path(args.report).write_text(text)
        print(text)
        return 0
    from .app import load_checkpoint, serve, validate  # lazy: fast --help (defers torch)
    print(f"loading the base model and the adapters of {args.checkpoint} (verified first) …", file=sys.stderr)
    model, tok, meta = load_checkpoint(args.checkpoint)
    if args.verb == "validate":
        out = validate(model, tok)
        for row in out["rows"]:
            print(f"--- {row['prompt']!r}\n  base:     {row['base']!r}\n  igbundle: {row['igbundle']!r}")
        print(f"Average internal sigma (mean component width): {out['average_sigma']:.4f}")
        return 0
    print(f"serving the chat UI at http://127.0.0.1:{args.port} (Ctrl-C stops it)", file=sys.stderr)
    serve(model, tok, args.port, block=True, model_name=meta.get("model", "the base model"))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
