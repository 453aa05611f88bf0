"""The seed's scripts:

    python -m geomlib.calabi [demo]      # its main.py: a 1024×1024 layer and a small Sequential, error, size, speed
    python -m geomlib.calabi compress --model smollm2 [--ratio 0.5] [--method energy_gap]

compress factorises every linear layer of a model (a preset: smollm2, tiny, minilm; or a local
Hugging Face folder) by truncated SVD and prints the parameters before and after. The activation-aware
methods (asvd, svdllm) need calibration text: notebook 11 (`geomlib.calabi.lab`) runs them, with
perplexity and speed. An expected error is one line on stderr (exit 2); --debug shows the traceback."""
from __future__ import annotations

import sys

from llgbm.core import cli

WEIGHT_ONLY = ("plain", "energy_gap")      # the methods of geomlib.calabi.svd.METHODS that need no calibration text


def parse(argv: list[str]):
    ap = cli.parser("python -m geomlib.calabi", __doc__)
    sub = ap.add_subparsers(dest="verb")                 # no verb: the demo, as the seed's main.py
    cli.add_debug(sub.add_parser("demo", help="the seed's main.py demo"))
    c = cli.add_debug(sub.add_parser("compress", help="compress a model's decoder linears and count parameters"))
    c.add_argument("--model", required=True, help="smollm2, tiny, minilm, or a local Hugging Face folder")
    c.add_argument("--ratio", type=float, default=0.5, help="fraction of each layer's parameters removed, in (0, 1)")
    c.add_argument("--method", default="plain", choices=WEIGHT_ONLY)
    c.add_argument("--min-features", type=int, default=128, help="skip layers narrower than this (the seed's 128)")
    args = ap.parse_args(argv)
    args.verb = args.verb or "demo"
    if args.verb == "compress":
        if not 0 < args.ratio < 1:
            raise cli.CommandError(f"--ratio is the fraction of parameters removed, in (0, 1); got {args.ratio}")
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
    print(f"loading {args.model} …", file=sys.stderr)
    model = svd.load_hf_model(args.model)
    svd.compress_hf_model(model, args.ratio, verbose=True, method=args.method, min_features=args.min_features, progress=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
