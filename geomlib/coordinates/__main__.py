"""The seed's commands:

    python -m geomlib.coordinates verify --config geomlib/configs/geometric_10m.yaml
    python -m geomlib.coordinates train [--profile quick]          # the CPU GeometricLlama on pydoc text
    python -m geomlib.coordinates generate --prompt "The with statement" [--checkpoint DIR] [--max-length 40]
                                           [--no-refinement] [--analyze-coordinates]

verify builds the configured model on the meta device (no memory) and prints the seed's parameter
table with what is really built; generate uses the model `train` leaves (notebook 12 trains it too),
verified as it loads. An expected error is one line on stderr (exit 2); --debug shows the traceback."""
from __future__ import annotations

import sys

from llgbm.core import cli

README_TABLE = {"embeddings": 1.4e6, "blocks": 5.2e6, "modulation": 1.84e6, "predictor": 256e3, "output": 1.4e6, "total": 10e6}


def parse(argv: list[str]):
    ap = cli.parser("python -m geomlib.coordinates", __doc__)
    sub = ap.add_subparsers(dest="verb", required=True)
    cli.add_debug(sub.add_parser("verify")).add_argument("--config", required=True)
    for verb in ("train", "generate"):
        cli.add_debug(sub.add_parser(verb)).add_argument("--profile", default="quick", choices=("smoke", "quick", "full"))
    g = sub.choices["generate"]
    g.add_argument("--prompt", required=True)
    g.add_argument("--checkpoint", default=None, help="a train checkpoint folder (default: the profile's)")
    g.add_argument("--max-length", type=int, default=40, help="new tokens (a progress bar shows the time per token)")
    g.add_argument("--no-refinement", action="store_true")
    g.add_argument("--analyze-coordinates", action="store_true")
    args = ap.parse_args(argv)
    if args.verb == "verify":
        cli.input_file(args.config, "--config")
    if args.verb == "generate":
        if args.max_length < 1:
            raise cli.CommandError(f"--max-length must be ≥ 1, got {args.max_length}")
        if not args.prompt.strip():
            raise cli.CommandError("--prompt is empty: give text to continue")
    return args


def read_model_section(path: str) -> dict:
    """The `model:` section of the seed's YAML layout, or a CommandError saying what the file holds instead."""
    import yaml
    try:
        conf = yaml.safe_load(open(path))
    except yaml.YAMLError as e:
        raise cli.CommandError(f"{path} is not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(conf, dict) or not isinstance(conf.get("model"), dict):
        raise cli.CommandError(f"{path}: expected a YAML mapping with a `model:` section (the seed's layout), as in "
                               f"geomlib/configs/geometric_10m.yaml")
    return conf["model"]


def main(argv: list[str]) -> int:
    args = parse(argv)
    import torch
    if args.verb == "verify":
        from .host import GeometricLlama  # lazy: fast --help (defers torch)
        model_conf = read_model_section(args.config)
        with torch.device("meta"):
            parts = GeometricLlama(model_conf).parameter_breakdown()
        print(f"{'component':14s} {'built':>14s} {'README says':>12s}")
        for k, n in parts.items():
            said = README_TABLE.get(k)
            print(f"{k:14s} {n:14,d} {f'{said / 1e6:.2f}M' if said else '—':>12s}")
        print(f"\nThe seed's \"10M\" configuration builds {parts['total'] / 1e6:.1f}M parameters: "
              f"{parts['modulation'] / 1e6:.1f}M of coordinate modulation alone, and untied embeddings and output "
              f"of {parts['embeddings'] / 1e6:.1f}M each.")
        return 0
    from llgbm.eval.lm import pydoc_corpus  # lazy: fast --help (defers torch)

    from . import lab  # lazy: fast --help (defers torch)
    cfg = lab.ScratchConfig.preset(args.profile)
    tokenizer = "tiny" if args.profile == "smoke" else "smollm2"
    if args.verb == "train":
        corpus = pydoc_corpus(tokenizer)
        res = lab.train_scratch("geometric", corpus, cfg)
        print(f"GeometricLlama ({res['params']['total']:,} parameters): validation loss {res['val_loss']:.3f} nats "
              f"after {cfg.steps} steps; checkpoint {lab.scratch_dir('geometric', cfg, len(corpus['vocab'])) / 'checkpoint'}")
        return 0
    from llgbm.core.models import load_tokenizer  # lazy: fast --help (defers torch)

    from .generation import GenerationConfig, GeometricGenerator  # lazy: fast --help (defers torch)
    tok = load_tokenizer(tokenizer)
    path = args.checkpoint
    if path is None:
        corpus = pydoc_corpus(tokenizer)
        path = lab.scratch_dir("geometric", cfg, len(corpus["vocab"])) / "checkpoint"
    model, vocab, _ = lab.load_trained(path)
    gen = GeometricGenerator(model, lab.CompactTokenizer(tok, vocab), device="cpu")
    try:
        text, coords = gen.generate(args.prompt, GenerationConfig(max_length=args.max_length,
                                                                  use_coordinate_refinement=not args.no_refinement))
    except KeyError as e:
        raise cli.CommandError(f"the prompt uses a token the pydoc corpus never uses ({e}); rephrase it in the "
                               f"documentation's words") from None
    print(text)
    if args.analyze_coordinates:
        stats = gen.get_coordinate_statistics(args.prompt)
        print(f"coordinate norm {stats['norm']:.3f}; top 10 active dimensions {stats['top_10_dims']}; "
              f"sampled {sum(gen.sampled)} of {len(gen.sampled)} tokens (the rest greedy)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
