"""Teachers trained to a dev-loss plateau (llgbm.teachers.plateau): the stopping rule, the best
checkpoint chosen on dev, the record, resume after an interruption, and bad input."""
import json

import numpy as np
import pytest

from llgbm.core import tasks
from llgbm.core.lora import lora_applied
from llgbm.teachers.plateau import PlateauConfig, dev_loss, train_to_plateau
from llgbm.teachers.zoo import ZooConfig

TASK = "arithmetic_add_4"      # a large-suite task: it has a dev split


def test_plateau_run_stops_keeps_the_best_dev_checkpoint_and_resumes(tiny, lab_home):
    model, tok = tiny
    zcfg = ZooConfig.preset("smoke", lr=5e-2, batch_size=4, eval_items=2)
    pcfg = PlateauConfig(check_every=2, max_steps=8, patience=1, dev_items=4, tol=0.01)
    rec = train_to_plateau(model, tok, TASK, 0, zcfg, pcfg, lab_home / "plateau", progress=False)
    steps, devs = zip(*rec["dev_checks"])
    assert steps[0] == 0 and all(s % 2 == 0 for s in steps) and rec["steps_trained"] == steps[-1] <= 8
    assert rec["best_dev_loss"] == min(devs) and rec["best_step"] == steps[int(np.argmin(devs))]
    # the rule: it stopped at the first check that failed to improve the best by 1%, or at max_steps
    best, stale = devs[0], 0
    for d in devs[1:]:
        best, stale = (d, 0) if best - d >= 0.01 * best else (best, stale + 1)
    assert rec["stopped"] == ("plateau" if stale >= 1 else "max_steps")
    row = rec["checkpoints"][0]
    assert row["step"] == rec["best_step"] and row["task"] == TASK and np.isfinite(row["test_loglik"])
    with lora_applied(model, lab_home / "plateau" / row["path"]) as m:    # the saved folder is the best checkpoint
        assert dev_loss(m, tok, tasks.get_task(TASK), 4) == pytest.approx(rec["best_dev_loss"], rel=1e-4)
    # a run interrupted after 3 steps and resumed ends where the uninterrupted one did
    other = lab_home / "resumed"
    assert train_to_plateau(model, tok, TASK, 0, zcfg, pcfg, other, progress=False, stop_after=3) is None
    again = train_to_plateau(model, tok, TASK, 0, zcfg, pcfg, other, progress=False)
    assert np.allclose(again["dev_checks"], rec["dev_checks"], rtol=1e-4) and again["best_step"] == rec["best_step"]
    # a finished run is read back, not retrained
    run_json = next((lab_home / "plateau" / TASK).glob("seed0-plateau-*/run.json"))
    assert json.loads(run_json.read_text()) == train_to_plateau(model, tok, TASK, 0, zcfg, pcfg, lab_home / "plateau")


def test_plateau_refuses_bad_input(tiny, lab_home):
    model, tok = tiny
    with pytest.raises(ValueError, match="no dev split"):
        train_to_plateau(model, tok, "add_1", 0, ZooConfig.preset("smoke"), PlateauConfig.preset("smoke"), lab_home)
    with pytest.raises(ValueError, match="max_steps ≥ check_every"):
        PlateauConfig(check_every=10, max_steps=5)
    assert PlateauConfig.preset("quick").max_steps > ZooConfig.preset("quick").steps
