"""The seed's commands:

    python -m geomlib.coordinates verify --config geomlib/configs/geometric_10m.yaml
    python -m geomlib.coordinates train [--profile quick]          # the CPU GeometricLlama on pydoc text
    python -m geomlib.coordinates generate --prompt "The with statement" [--no-refinement] [--analyze-coordinates]

verify builds the configured model on the meta device (no memory) and prints the seed's parameter
table with what is really built; generate uses the model `train` leaves (notebook 12 trains it too)."""
from __future__ import annotations

import argparse
import sys

README_TABLE = {"embeddings": 1.4e6, "blocks": 5.2e6, "modulation": 1.84e6, "predictor": 256e3, "output": 1.4e6, "total": 10e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m geomlib.coordinates", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="verb", required=True)
    v = sub.add_parser("verify")
    v.add_argument("--config", required=True)
    for verb in ("train", "generate"):
        p = sub.add_parser(verb)
        p.add_argument("--profile", default="quick", choices=("smoke", "quick", "full"))
    g = sub.choices["generate"]
    g.add_argument("--prompt", required=True)
    g.add_argument("--checkpoint", default=None, help="a train checkpoint folder (default: the profile's)")
    g.add_argument("--max-length", type=int, default=40)
    g.add_argument("--no-refinement", action="store_true")
    g.add_argument("--analyze-coordinates", action="store_true")
    args = ap.parse_args(argv)

    import torch
    import yaml
    if args.verb == "verify":
        from .host import GeometricLlama  # lazy: fast --help (defers torch)
        conf = yaml.safe_load(open(args.config))
        if not isinstance(conf, dict) or "model" not in conf:
            print(f"{args.config}: expected a YAML mapping with a `model:` section (the seed's layout)", file=sys.stderr)
            return 2
        with torch.device("meta"):
            parts = GeometricLlama(conf["model"]).parameter_breakdown()
        print(f"{'component':14s} {'built':>14s} {'README says':>12s}")
        for k, n in parts.items():
            said = README_TABLE.get(k)
            print(f"{k:14s} {n:14,d} {said / 1e6 if said else float('nan'):11.2f}M")
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
    try:
        model, vocab, _ = lab.load_trained(path)
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    gen = GeometricGenerator(model, lab.CompactTokenizer(tok, vocab), device="cpu")
    try:
        text, coords = gen.generate(args.prompt, GenerationConfig(max_length=args.max_length,
                                                                  use_coordinate_refinement=not args.no_refinement))
    except KeyError as e:
        print(f"the prompt uses a token the pydoc corpus never uses ({e}); rephrase it in the documentation's words",
              file=sys.stderr)
        return 2
    print(text)
    if args.analyze_coordinates:
        stats = gen.get_coordinate_statistics(args.prompt)
        print(f"coordinate norm {stats['norm']:.3f}; top 10 active dimensions {stats['top_10_dims']}; "
              f"sampled {sum(gen.sampled)} of {len(gen.sampled)} tokens (the rest greedy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
