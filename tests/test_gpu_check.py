"""tools/gpu_check.sh (`make gpu-check`), tested on a CPU for everything but the CUDA calls."""
import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "gpu_check.sh"


def check(tmp_path, **env):
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OUT": str(tmp_path / "out"), "LLGBM_REPORTS": str(tmp_path / "reports"), **env})


def test_dry_run_names_every_stage_and_the_cuda_torch_it_installs(tmp_path):
    p = check(tmp_path, GPU_CHECK_DRY="1")
    assert p.returncode == 0, p.stderr
    stages = [line.split(":")[0] for line in p.stdout.splitlines()]
    assert stages == ["env", "setup", "unit", "smoke", "quick"]
    assert "torch==2.13.0 --index-url" in p.stdout and "make setup" in p.stdout
    assert '-m pytest -q -x -m "not notebook"' in p.stdout and "--profile quick --only 00_baseline 06_zeroshot" in p.stdout
    wheels = check(tmp_path, GPU_CHECK_DRY="1", STAGES="setup", TORCH_WHEELS="/w").stdout
    assert '--no-index --find-links "/w" torch==2.13.0' in wheels


def test_an_unknown_stage_is_refused_with_the_known_ones(tmp_path):
    p = check(tmp_path, STAGES="env tests")
    assert p.returncode == 2 and "unknown stage 'tests'; the stages are: env setup unit smoke quick" in p.stderr


def test_no_stage_runs_on_the_cpu_by_mistake(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    p = check(tmp_path, STAGES="unit")
    assert p.returncode == 3 and "sees no GPU" in p.stderr


def test_stages_run_and_are_timed_on_a_cpu_when_allowed(tmp_path):
    p = check(tmp_path, STAGES="env unit", GPU_CHECK_ALLOW_CPU="1",
              UNIT_TESTS="tests/test_stats.py -k test_sign_flip_test_is_exact_on_few_pairs")
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["env", "unit"] and all(s["rc"] == 0 for s in report["stages"])
    assert all(s["seconds"] > 0 for s in report["stages"])
    assert "torch 2.13.0" in (tmp_path / "out" / "env.log").read_text()
    assert "1 passed" in (tmp_path / "out" / "unit.log").read_text()
