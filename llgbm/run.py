"""`python -m llgbm.run`: run every notebook through papermill and write the report (`llgbm.notebook.run`)."""
from llgbm.core import cli
from llgbm.notebook.run import main

if __name__ == "__main__":
    raise SystemExit(cli.run(main))
