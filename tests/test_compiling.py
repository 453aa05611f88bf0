"""torch.compile as an execution option: the same numbers as eager within float tolerance, and the
shared base model eager again after every block."""
import pytest
import torch

from llgbm.bench.hotpaths import ZooStep
from llgbm.core.compiling import compiled_backbone, is_compiled
from llgbm.core.tasks import get_task
from llgbm.eval.scoring import target_logprobs
from llgbm.teachers.zoo import ZooConfig


def _loss_and_grads(step):
    loss = -target_logprobs(step.model, step.batch).mean()
    step.model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in step.model.named_parameters() if p.requires_grad}


def test_compiled_zoo_step_matches_eager_and_restores(tiny):
    model, tok = tiny
    step = ZooStep(model, tok, ZooConfig.preset("smoke"), get_task("add_1"))
    try:
        eager_loss, eager_grads = _loss_and_grads(step)
        with compiled_backbone(step.model):
            assert is_compiled(step.model) and is_compiled(model)    # the peft wrapper and the base share one stack
            with compiled_backbone(step.model):                      # nested: reuses the outer compilation
                pass
            assert is_compiled(step.model)
            loss, grads = _loss_and_grads(step)
        assert not is_compiled(model)
        assert loss == pytest.approx(eager_loss, rel=1e-4, abs=1e-5)
        for name, g in eager_grads.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-3, atol=1e-5, msg=name)
    finally:
        step.close()


def test_compiled_block_restores_eager_on_error(tiny):
    model, _ = tiny
    with pytest.raises(RuntimeError, match="inside"):
        with compiled_backbone(model):
            raise RuntimeError("inside the block")
    assert not is_compiled(model)
    with compiled_backbone(model, enabled=False):
        assert not is_compiled(model)


def test_a_teacher_trained_compiled_matches_its_eager_run_and_keeps_the_zoo_key(tiny, lab_home):
    from dataclasses import replace

    from llgbm.teachers import zoo
    model, tok = tiny
    cfg = ZooConfig.preset("smoke", steps=4, save_every=2, n_checkpoints=1, eval_items=2)
    compiled = replace(cfg, compile=True)
    assert compiled.training_key() == cfg.training_key()        # an execution option: the same zoo folder
    eager = zoo.train_teacher(model, tok, "add_1", 0, cfg, lab_home / "eager", progress=False)
    fast = zoo.train_teacher(model, tok, "add_1", 0, compiled, lab_home / "compiled", progress=False)
    assert not is_compiled(model) and not any("lora" in n for n, _ in model.named_modules())
    assert fast["config"]["compile"] is True and fast["losses"] == pytest.approx(eager["losses"], rel=1e-3)
    path = "add_1/seed0/step0004/adapter_model.safetensors"
    from safetensors.torch import load_file
    a, b = load_file(str(lab_home / "eager" / path)), load_file(str(lab_home / "compiled" / path))
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=1e-3, atol=1e-5, msg=k)
