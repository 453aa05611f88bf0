"""`python -m llgbm.ddp`: train a generator across accelerate processes (`llgbm.lab.ddp`)."""
from llgbm.core import cli
from llgbm.lab.ddp import main

if __name__ == "__main__":
    raise SystemExit(cli.run(main))
