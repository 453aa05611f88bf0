"""`python -m llgbm.generate`: write a generated peft adapter for a task or a file of prompts (`llgbm.lab.generate`)."""
from llgbm.core import cli
from llgbm.lab.generate import main

if __name__ == "__main__":
    raise SystemExit(cli.run(main))
