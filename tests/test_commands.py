"""Every geomlib command walked with the bad inputs a new user hits (issue 28): one line on stderr, exit
status 2, no traceback, nothing written; `--debug` shows the traceback; `--help` answers before torch
loads. And every loader refuses a truncated or NaN checkpoint with a message that names the file."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("geomlib.igbundle", "geomlib.coordinates", "geomlib.inl", "geomlib.calabi")


def _run(module, *argv, cwd, home=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), LLGBM_HOME=str(home or cwd / "home"))
    return subprocess.run([sys.executable, "-m", module, *map(str, argv)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def _one_line_error(run, expected: str):
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert "Traceback" not in run.stderr and lines[-1].startswith("error: ") and expected in lines[-1], run.stderr[-2000:]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_fast_and_loads_no_torch(command, tmp_path):
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", command, "--help"], capture_output=True, text=True,
                         cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    seconds = time.perf_counter() - t0
    imported = [line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if "|" in line]
    assert run.returncode == 0 and "--debug" in run.stdout and "torch" not in imported
    assert seconds < 10, seconds            # ~0.1 s alone; generous for a loaded CI machine (torch alone takes longer)


def _bad_inputs(tmp: Path) -> list[tuple[str, list, str]]:
    """(command, arguments, what the one line must say): checked before anything heavy loads."""
    (tmp / "folder").mkdir()
    (tmp / "lora_typo.yaml").write_text("lora:\n  rank: 8\n")
    (tmp / "targets_typo.yaml").write_text("lora:\n  r: 8\n  target_modulez: [q_proj]\n")
    (tmp / "data_typo.yaml").write_text("data:\n  taks: [add_1]\n")
    (tmp / "tasks_string.yaml").write_text("data:\n  tasks: add_1\n")
    (tmp / "loss_typo.yaml").write_text("loss:\n  lamda_glue: 0.1\n")
    (tmp / "bad_value.yaml").write_text("training:\n  learning_rate: 2e-5\n")
    (tmp / "broken.yaml").write_text("a: [\n")
    (tmp / "no_model.yaml").write_text("training: {}\n")
    (tmp / "section_typo.yaml").write_text("model:\n  base_architecture:\n    hiden_dim: 64\n")
    (tmp / "bad_json.json").write_text("{not json")
    (tmp / "unknown_field.json").write_text('{"stepz": 3}')
    return [
        ("geomlib.igbundle", ["train", "--config", tmp / "missing.yaml"], "does not exist"),
        ("geomlib.igbundle", ["train", "--config", tmp / "folder"], "is a directory, not a file"),
        ("geomlib.igbundle", ["train", "--config", tmp / "lora_typo.yaml"], "unknown key(s) in the lora: section"),
        ("geomlib.igbundle", ["train", "--config", tmp / "targets_typo.yaml"], "['target_modulez']; known: r, lora_alpha"),
        ("geomlib.igbundle", ["train", "--config", tmp / "data_typo.yaml"], "['taks']; known: tasks"),
        ("geomlib.igbundle", ["train", "--config", tmp / "tasks_string.yaml"], "tasks must be a list of task names"),
        ("geomlib.igbundle", ["train", "--config", tmp / "loss_typo.yaml"], "['lamda_glue']; known: lambda_glue"),
        ("geomlib.igbundle", ["train", "--config", tmp / "bad_value.yaml"], "learning_rate: '2e-5' is not a number"),
        ("geomlib.igbundle", ["train", "--config", tmp / "broken.yaml"], "is not valid YAML"),
        ("geomlib.igbundle", ["train", "--config", ROOT / "geomlib/configs/igbundle_tiny.yaml", "--max-steps", "0"], "≥ 1"),
        ("geomlib.igbundle", ["train", "--config", ROOT / "geomlib/configs/igbundle_tiny.yaml", "--report", tmp / "folder"],
         "is a folder: pass a file name"),
        ("geomlib.igbundle", ["verify", "--checkpoint", tmp / "missing"], "does not exist"),
        ("geomlib.igbundle", ["validate", "--checkpoint", tmp / "missing"], "does not exist"),
        ("geomlib.igbundle", ["validate", "--checkpoint", tmp / "folder"], "not an IGBundle checkpoint"),
        ("geomlib.igbundle", ["chat", "--checkpoint", tmp / "folder"], "not an IGBundle checkpoint"),
        ("geomlib.coordinates", ["verify", "--config", tmp / "missing.yaml"], "does not exist"),
        ("geomlib.coordinates", ["verify", "--config", tmp / "no_model.yaml"], "`model:` section"),
        ("geomlib.coordinates", ["verify", "--config", tmp / "broken.yaml"], "is not valid YAML"),
        ("geomlib.coordinates", ["verify", "--config", tmp / "section_typo.yaml"], "['hiden_dim']"),
        ("geomlib.coordinates", ["generate", "--prompt", "The", "--max-length", "0"], "--max-length must be ≥ 1"),
        ("geomlib.coordinates", ["generate", "--profile", "smoke", "--prompt", "The", "--checkpoint", tmp / "folder"],
         "no trained GeometricLlama"),
        ("geomlib.inl", ["generate", "--prompt", "The", "--checkpoint", tmp / "missing"], "does not exist"),
        ("geomlib.inl", ["generate", "--prompt", "The", "--temperature", "0"], "--temperature > 0"),
        ("geomlib.inl", ["generate", "--profile", "smoke", "--prompt", "The", "--no-train"], "no trained INL model"),
        ("geomlib.inl", ["train", "--steps", "0"], "--steps must be ≥ 1"),
        ("geomlib.inl", ["train", "--report", tmp / "folder"], "--report"),
        ("geomlib.inl", ["train", "--lab-config", tmp / "bad_json.json"], "is not valid JSON"),
        ("geomlib.inl", ["train", "--profile", "smoke", "--lab-config", tmp / "unknown_field.json"], "['stepz']"),
        ("geomlib.calabi", ["compress", "--model", "nope"], "neither a preset"),
        ("geomlib.calabi", ["compress", "--model", "tiny", "--ratio", "1.5"], "in (0, 1)"),
    ]


def _main(module: str):
    import importlib
    return importlib.import_module(f"{module}.__main__").main


def _one_line(module, argv, capsys) -> tuple[int, str]:
    from llgbm.core import cli
    code = cli.run(_main(module), [str(a) for a in argv])
    return code, capsys.readouterr().err


def test_every_command_fails_in_one_line_and_writes_nothing(lab_home, tmp_path, capsys):
    cases = _bad_inputs(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir()), sorted(p.name for p in lab_home.iterdir())
    for module, argv, expected in cases:
        code, err = _one_line(module, argv, capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and lines and lines[-1].startswith("error: ") and expected in lines[-1], (module, argv, err)
        assert "Traceback" not in err
    assert (sorted(p.name for p in tmp_path.iterdir()), sorted(p.name for p in lab_home.iterdir())) == before
    debug = _run("geomlib.igbundle", "train", "--config", tmp_path / "lora_typo.yaml", "--debug", cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "lora: section" in debug.stderr
    plain = _run("geomlib.calabi", "compress", "--model", "nope", cwd=tmp_path)     # the real entry point: exit status 2
    _one_line_error(plain, "neither a preset")


def test_a_busy_chat_port_is_named_before_the_model_loads(tmp_path, capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, err = _one_line("geomlib.igbundle", ["chat", "--checkpoint", tmp_path, "--port", port], capsys)
    assert code == 2 and err == f"error: port {port} on 127.0.0.1 is in use: pass another one with --port\n"


def _corrupt(path: Path, how: str) -> None:
    """Truncate a safetensors file, or set one float of its first floating tensor to NaN (metadata kept)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
        return
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() and not k.startswith("adam/"))
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("how", ["truncated", "nan"])
def test_inl_and_coordinate_models_refuse_a_bad_checkpoint_naming_it(how, lab_home, tmp_path):
    from geomlib.coordinates import lab as coords
    from geomlib.inl import lab as inl
    from geomlib.inl.store import load_trained
    from llgbm.eval.lm import pydoc_corpus

    corpus = pydoc_corpus("tiny")
    cfg = inl.INLLabConfig.preset("smoke", steps=2, eval_every=2)
    run = inl.train_lm(inl.models_for(cfg, len(corpus["vocab"]))["inl"], corpus, cfg, "inl", progress=False)["run_dir"]
    model, state = load_trained(run, vocab_size=len(corpus["vocab"]))
    assert state["step"] == 2 and not model.training
    with pytest.raises(ValueError, match="vocabulary of"):
        load_trained(run, vocab_size=len(corpus["vocab"]) + 1)
    scfg = coords.ScratchConfig.preset("smoke", steps=2)
    coords.train_scratch("geometric", corpus, scfg)
    folder = coords.scratch_dir("geometric", scfg, len(corpus["vocab"])) / "checkpoint"
    coords.load_trained(folder)
    for path, load in ((run / inl.CHECKPOINT, lambda: load_trained(run)),
                       (next(folder.glob("*.safetensors")), lambda: coords.load_trained(folder))):
        _corrupt(path, how)
        with pytest.raises(ValueError, match=f"{path.name}.*(not a readable|NaN/Inf)") as err:
            load()
        assert str(path.parent) in str(err.value)
    resumed = pytest.raises(ValueError, match=inl.CHECKPOINT)        # a training resume refuses it too
    with resumed:
        inl.train_lm(inl.models_for(cfg, len(corpus["vocab"]))["inl"], corpus, cfg, "inl", progress=False)


def test_inl_generate_loads_a_given_checkpoint_and_says_when_it_trains_first(lab_home, tmp_path, capsys):
    from geomlib.inl.__main__ import main
    from llgbm.core import cli
    assert cli.run(main, ["generate", "--profile", "smoke", "--prompt", "The", "--max-new-tokens", "2"]) == 0
    captured = capsys.readouterr()
    assert "training it first" in captured.err and captured.out.startswith("The")
    run = next((lab_home / "inl").glob("inl-*"))
    copy = tmp_path / "mine"
    copy.mkdir()
    (copy / "checkpoint.safetensors").write_bytes((run / "checkpoint.safetensors").read_bytes())
    assert cli.run(main, ["generate", "--profile", "smoke", "--prompt", "The", "--max-new-tokens", "2",
                          "--checkpoint", str(copy)]) == 0
    assert "training" not in capsys.readouterr().err


def test_igbundle_train_rerun_writes_strict_json(lab_home, tmp_path, capsys):
    report = tmp_path / "r.json"
    for _ in range(2):                                  # the second run finds the run finished: nothing timed
        code, err = _one_line("geomlib.igbundle", ["train", "--config", ROOT / "geomlib/configs/igbundle_tiny.yaml",
                                                   "--report", report], capsys)
        assert code == 0, err
    summary = json.loads(report.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert summary["steps"] == 6 and summary["resumed_from"] == 6 and summary["seconds_per_step"] is None


def test_chat_reply_is_never_blank_and_names_the_model(tiny, monkeypatch):
    from geomlib.igbundle import app
    monkeypatch.setattr(app, "reply", lambda *a, **k: "")
    assert app.chat_reply(None, None, "hi") == app.EMPTY_REPLY
    model, tok = tiny
    demo = app.chat_app(model, tok, model_name="tiny")
    assert "tiny with IGBundle adapters" in demo.description and "SmolLM2" not in demo.description


def test_checkpoint_loaders_share_one_finite_check():
    """Teachers, generators, IGBundle, INL and the coordinate models all load through llgbm.core.checkpoint
    (whose load checks finiteness); IGBundle's adapter folders are verified by host.verify."""
    text = (ROOT / "llgbm/core/checkpoint.py").read_text()
    assert "check_finite(weights" in text
    users = {str(p.relative_to(ROOT)) for pkg in ("llgbm", "geomlib") for p in (ROOT / pkg).rglob("*.py")
             if "checkpoint.load(" in p.read_text()}
    assert {"llgbm/teachers/run.py", "llgbm/generator/train.py", "geomlib/inl/store.py",
            "geomlib/coordinates/training.py", "geomlib/igbundle/train.py"} <= users
