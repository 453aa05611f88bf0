"""The layout as a user meets it: every `python -m` command the README names answers --help, every
import line in the README's code runs, and the seeds' import paths give the lab's own objects."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _readme_commands() -> list[str]:
    mods = set(re.findall(r"python -m ((?:llgbm|geomlib)(?:\.[a-z_]+)*)", README))
    return sorted(mods)


def test_readme_names_the_commands():
    assert {"llgbm.run", "llgbm.zoo", "llgbm.generate", "llgbm.bench", "geomlib.igbundle"} <= set(_readme_commands())


def test_every_readme_command_answers_help():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = {m: subprocess.Popen([sys.executable, "-m", m, "--help"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for m in _readme_commands()}
    failed = {}
    for m, p in procs.items():
        out, err = p.communicate(timeout=300)
        if p.returncode != 0 or "usage" not in out.lower():
            failed[m] = (p.returncode, err[-500:])
    assert failed == {}


def test_readme_import_lines_run():
    lines = [ln.strip() for block in re.findall(r"```python\n(.*?)```", README, re.S) for ln in block.splitlines()
             if re.match(r"\s*from (llgbm|geomlib)[\w.]* import ", ln)]
    assert lines, "the README shows no import"
    for line in lines:
        exec(line, {})


def test_seed_import_paths_are_the_lab_objects():
    from geomlib import calabi, coordinates
    from geomlib.calabi import svd
    from geomlib.coordinates import generation
    from llgbm import dataset, delta, functional, probes, training
    from llgbm.core import functional as core_functional
    from llgbm.delta import activations
    from llgbm.delta import probes as delta_probes
    from llgbm.generator import dataset as gen_dataset
    from llgbm.generator import losses, sample, train

    assert (training.TrainingConfig, training.train) == (train.TrainingConfig, train.train)
    assert (training.MultiTaskLoss, training.DeltaOnlyLoss, training.evaluate) == (losses.MultiTaskLoss, losses.DeltaOnlyLoss,
                                                                                    sample.evaluate)
    assert dataset.DeltaAugmentedDataset is gen_dataset.DeltaAugmentedDataset is dataset.Text2Qwen25LoRA_DeltaDataset
    assert dataset.create_dataloader is gen_dataset.create_dataloader
    assert (delta.DeltaCache, delta.compute_base_activation, delta.compute_adapter_delta) == (
        activations.DeltaCache, activations.compute_base_activation, activations.compute_adapter_delta)
    assert functional.FunctionalLoRA is core_functional.FunctionalLoRA
    assert functional.compute_delta_differentiable is core_functional.compute_delta_differentiable
    assert (probes.create_generic_probes, probes.create_domain_probes) == (delta_probes.create_generic_probes,
                                                                           delta_probes.create_domain_probes)
    assert (coordinates.GeometricGenerator, coordinates.GenerationConfig) == (generation.GeometricGenerator,
                                                                              generation.GenerationConfig)
    assert (calabi.OptimizedCalabiYauLinear, calabi.compress_hf_model) == (svd.OptimizedCalabiYauLinear, svd.compress_hf_model)


@pytest.mark.parametrize("module", ["llgbm.run", "llgbm.zoo", "llgbm.generate", "llgbm.ddp"])
def test_command_modules_are_thin(module):
    path = ROOT / (module.replace(".", "/") + ".py")
    assert len(path.read_text().splitlines()) <= 6
