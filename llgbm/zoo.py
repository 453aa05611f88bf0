"""`python -m llgbm.zoo`: build a profile's teacher zoo, alone or across accelerate ranks (`llgbm.teachers.zoo`)."""
from llgbm.core import cli
from llgbm.teachers.command import main

if __name__ == "__main__":
    raise SystemExit(cli.run(main))
