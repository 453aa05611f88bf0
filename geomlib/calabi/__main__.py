"""The seed's scripts:

    python -m geomlib.calabi [demo]      # its main.py: a 1024×1024 layer and a small Sequential, error, size, speed
    python -m geomlib.calabi compress --model smollm2 [--ratio 0.5] [--method energy_gap]
    python -m geomlib.calabi compress --model smollm2 --ratio 0.2 --method svdllm+alloc --out smollm2-20

compress factorises the linear layers of a model (a preset: smollm2, tiny, minilm; or a local Hugging
Face folder) by truncated SVD and prints the parameters before and after. With --out it writes the
compressed causal LM to a folder that `geomlib.calabi.store.load_compressed` reads back (same logits),
tokenizer included. The activation-aware methods (asvd, svdllm and issue 29's asvd+update and
svdllm+alloc, notebook 11's frontier) calibrate on --calib-windows windows of Python's offline pydoc
text and need --out. An expected error is one line on stderr (exit 2); --debug shows the traceback."""
from __future__ import annotations

import sys

from llgbm.core import cli

WEIGHT_ONLY = ("plain", "energy_gap")      # the methods of geomlib.calabi.svd.METHODS that need no calibration text
ALL_METHODS = ("plain", "energy_gap", "asvd", "asvd+update", "svdllm", "svdllm+alloc", "svdllm+alloc-type",
               "svdllm+alloc-rel")   # lab.ALL_METHODS (a test checks)


def parse(argv: list[str]):
    ap = cli.parser("python -m geomlib.calabi", __doc__)
    sub = ap.add_subparsers(dest="verb")                 # no verb: the demo, as the seed's main.py
    cli.add_debug(sub.add_parser("demo", help="the seed's main.py demo"))
    c = cli.add_debug(sub.add_parser("compress", help="compress a model's decoder linears and count parameters"))
    c.add_argument("--model", required=True, help="smollm2, tiny, minilm, or a local Hugging Face folder")
    c.add_argument("--ratio", type=float, default=0.5, help="fraction of each layer's parameters removed, in (0, 1)")
    c.add_argument("--method", default="plain", choices=ALL_METHODS)
    c.add_argument("--min-features", type=int, default=128, help="skip layers narrower than this (the seed's 128)")
    c.add_argument("--out", help="write the compressed model to this folder (a causal LM; must not exist yet)")
    c.add_argument("--calib-windows", type=int, default=48, help="128-token pydoc windows to calibrate on (activation-aware methods)")
    args = ap.parse_args(argv)
    args.verb = args.verb or "demo"
    if args.verb == "compress":
        if not 0 < args.ratio < 1:
            raise cli.CommandError(f"--ratio is the fraction of parameters removed, in (0, 1); got {args.ratio}")
        if args.method not in WEIGHT_ONLY and not args.out:
            raise cli.CommandError(f"--method {args.method} calibrates on text and is written to a folder: add --out FOLDER "
                                   f"(or use a weight-only method: {', '.join(WEIGHT_ONLY)})")
        if args.out and args.model == "minilm":
            raise cli.CommandError("--out writes causal LMs (smollm2, tiny, or a local causal-LM folder); minilm is an encoder")
        if args.out and cli.output_dir(args.out, "--out").exists():
            raise cli.CommandError(f"--out {args.out} exists already: name a new folder (nothing is overwritten)")
        if args.calib_windows < 1:
            raise cli.CommandError(f"--calib-windows must be ≥ 1; got {args.calib_windows}")
        if args.model not in ("smollm2", "tiny", "minilm"):
            folder = cli.output_dir(args.model, "--model")        # an existing folder (or a name that is not one)
            if not (folder / "config.json").is_file():
                raise cli.CommandError(f"--model {args.model} is neither a preset (smollm2, tiny, minilm) nor a local "
                                       f"Hugging Face folder with a config.json; nothing is downloaded at run time")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    from . import svd  # lazy: fast --help (defers torch)
    if args.verb == "demo":
        svd.main()
        return 0
    if args.out:
        from . import lab  # lazy: the harness loads the tokenizer and the calibration text
        print(f"compressing {args.model} ({args.method}, {args.ratio:.0%} removed) into {args.out} …", file=sys.stderr)
        n = lab.compress_to_folder(args.model, args.ratio, args.method, args.out, args.calib_windows, args.min_features)
        print(f"compressed {n['layers']} linear layers ({args.method}, ratio {args.ratio}): {n['params_before'] / 1e6:.2f}M -> "
              f"{n['params_after'] / 1e6:.2f}M linear parameters ({1 - n['params_after'] / n['params_before']:.1%} removed); "
              f"saved to {args.out}")
        return 0
    print(f"loading {args.model} …", file=sys.stderr)
    model = svd.load_hf_model(args.model)
    svd.compress_hf_model(model, args.ratio, verbose=True, method=args.method, min_features=args.min_features, progress=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
