"""The commands' one error path (`llgbm.core.cli`): one line on stderr, exit status 2, nothing
written, `--debug` for the traceback; paths checked and `--help` answered before torch loads."""
import logging
import os
import subprocess
import sys

import pytest

from llgbm.core import cli

PROBE = ("import sys\nfrom llgbm.core import cli\nfrom llgbm.generate import main\n"
         "rc = cli.run(main, sys.argv[1:])\nprint('torch loaded' if 'torch' in sys.modules else 'torch not loaded')\n"
         "raise SystemExit(rc)")


def _command(*argv, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", PROBE, *map(str, argv)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120)


def test_generate_refuses_bad_paths_in_one_line_before_torch_loads(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Add 4 to the number.\\nInput: 12\\nOutput:\n")
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    cases = [(["--prompts", tmp_path, "--out", tmp_path / "o"], "is a directory, not a file"),
             (["--prompts", tmp_path / "missing.txt", "--out", tmp_path / "o"], "does not exist"),
             (["--prompts", prompts, "--out", a_file], "is an existing file: pass a folder"),
             (["--prompts", prompts, "--out", a_file / "sub"], "its parent"),
             (["--prompts", prompts, "--out", tmp_path / "o", "--objective", "magic"], "invalid choice: 'magic'")]
    for argv, expected in cases:
        run = _command(*argv, cwd=tmp_path)
        assert run.returncode == 2, run.stderr
        assert expected in run.stderr and "Traceback" not in run.stderr, run.stderr
        assert run.stdout.strip() == "torch not loaded" or "invalid choice" in expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.txt", "taken"]          # nothing written


@pytest.mark.parametrize("command", ["llgbm.run", "llgbm.zoo", "llgbm.generate", "llgbm.ddp", "llgbm.bench"])
def test_help_answers_without_torch(command, tmp_path):
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", command, "--help"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert run.returncode == 0 and "--debug" in run.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if "|" in line]
    assert "llgbm.core.cli" in imported and "torch" not in imported     # (the command itself runs as __main__)


def test_one_line_for_expected_errors_and_the_traceback_with_debug(capsys):
    def fails(argv):
        raise KeyError("unknown task 'x'; the closest: y")

    assert cli.run(fails, []) == 2
    assert capsys.readouterr().err == "error: unknown task 'x'; the closest: y\n"
    with pytest.raises(KeyError):
        cli.run(fails, ["--debug"])

    def bug(argv):
        raise ZeroDivisionError("a bug keeps its traceback")

    with pytest.raises(ZeroDivisionError):
        cli.run(bug, [])
    assert cli.message(ValueError("two\n  lines")) == "two lines"
    assert cli.message(IsADirectoryError(21, "Is a directory", "/tmp/x")) == "Is a directory: /tmp/x"
    assert issubclass(cli.CommandError, ValueError)        # the Python API raises what the command reports


def test_the_bitsandbytes_kernels_message_is_filtered(caplog):
    import llgbm  # noqa: F401  (installs the filter)
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'")
        logger.warning("another bitsandbytes warning")
    assert [r.getMessage() for r in caplog.records] == ["another bitsandbytes warning"]
