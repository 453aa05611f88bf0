"""llgbm.core.checkpoint: the one resumable checkpoint (weights, Adam state, JSON state in one atomic
safetensors file): exact resume, tied weights, files of the older layouts, clear errors."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file, save_model

from llgbm.core import checkpoint

ROOT = Path(__file__).resolve().parents[1]


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.mid = nn.Linear(6, 6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.emb.weight          # tied, as an LM's embedding and head

    def forward(self, x):
        return self.head(torch.tanh(self.mid(self.emb(x))))


def _steps(model, opt, start, stop):
    for step in range(start, stop):
        x = torch.randint(0, 11, (4, 5), generator=torch.Generator().manual_seed(step))
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()


def _fresh():
    torch.manual_seed(0)
    model = Tied()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def test_resume_equals_an_uninterrupted_run(tmp_path):
    straight, opt = _fresh()
    _steps(straight, opt, 0, 5)
    first, opt1 = _fresh()
    _steps(first, opt1, 0, 3)
    checkpoint.save(tmp_path / "ck.safetensors", dict(step=3, history=[1.5, 1.25]), model=first, opt=opt1)
    resumed, opt2 = _fresh()
    weights, state = checkpoint.load(tmp_path / "ck.safetensors", model=resumed, opt=opt2)
    assert state == dict(step=3, history=[1.5, 1.25]) and checkpoint.read_state(tmp_path / "ck.safetensors") == state
    assert resumed.head.weight is resumed.emb.weight and "head.weight" in weights
    _steps(resumed, opt2, 3, 5)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert not list(tmp_path.glob(".*tmp*"))


def test_weights_dict_and_params_order(tmp_path):
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([a, b], lr=0.1)
    (a.sum() + 2 * b.sum()).backward()
    opt.step()
    checkpoint.save(tmp_path / "x.safetensors", {"step": 1}, weights={"p/a": a, "p/b": b}, opt=opt, params=[b, a])
    a2, b2 = nn.Parameter(torch.ones(3)), nn.Parameter(torch.zeros(2))
    opt2 = torch.optim.Adam([a2, b2], lr=0.1)
    weights, state = checkpoint.load(tmp_path / "x.safetensors", opt=opt2, params=[b2, a2])
    assert set(weights) == {"p/a", "p/b"} and state == {"step": 1}
    assert torch.equal(opt2.state[b2]["exp_avg"], opt.state[b]["exp_avg"])
    assert torch.equal(opt2.state[a2]["exp_avg_sq"], opt.state[a]["exp_avg_sq"])


def test_reads_the_older_layouts(tmp_path):
    """Teachers and generators stored their state as one metadata entry per key; INL and the
    coordinate models as a folder (model.safetensors, optimizer.safetensors, state.json)."""
    old = tmp_path / "old.safetensors"
    save_file({"lora/x": torch.ones(2)}, str(old), metadata=dict(step="12", losses=json.dumps([1.0, 0.5]), seconds="3.25"))
    weights, state = checkpoint.load(old)
    assert state == dict(step=12, losses=[1.0, 0.5], seconds=3.25) and torch.equal(weights["lora/x"], torch.ones(2))
    model, opt = _fresh()
    _steps(model, opt, 0, 2)
    folder = tmp_path / "run"
    folder.mkdir()
    save_model(model, str(folder / "model.safetensors"))
    save_file(checkpoint.adam_state_tensors(opt, list(model.parameters())), str(folder / "optimizer.safetensors"))
    (folder / "state.json").write_text(json.dumps(dict(step=2)))
    again, opt2 = _fresh()
    assert checkpoint.load_legacy_folder(folder, model=again, opt=opt2)[1] == dict(step=2)
    assert torch.equal(again.mid.weight, model.mid.weight) and again.head.weight is again.emb.weight
    assert torch.equal(opt2.state[again.mid.weight]["exp_avg"], opt.state[model.mid.weight]["exp_avg"])


def test_missing_or_truncated_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*nope"):
        checkpoint.load(tmp_path / "nope.safetensors")
    model, opt = _fresh()
    path = checkpoint.save(tmp_path / "ck.safetensors", {"step": 0}, model=model, opt=opt)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="ck.safetensors is not a readable checkpoint"):
        checkpoint.load(path)


def test_non_finite_or_mismatched_weights_are_refused_before_loading(tmp_path):
    model, opt = _fresh()
    bad = {k: v.clone() for k, v in model.state_dict().items()}
    bad["mid.weight"][0, 0] = float("nan")
    path = checkpoint.save(tmp_path / "nan.safetensors", {"step": 1}, weights=bad)
    target, _ = _fresh()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=r"nan.safetensors has NaN/Inf weights in 1 tensor\(s\), e.g. mid.weight"):
        checkpoint.load(path, model=target)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())      # nothing loaded
    other = checkpoint.save(tmp_path / "other.safetensors", {"step": 1}, model=nn.Linear(3, 3))
    with pytest.raises(ValueError, match="other.safetensors does not fit this model, it was saved from another config"):
        checkpoint.load(other, model=target)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    save_file({k: v.contiguous() for k, v in bad.items()}, str(legacy / "model.safetensors"))
    (legacy / "state.json").write_text("{}")
    with pytest.raises(ValueError, match=r"legacy/model.safetensors has NaN/Inf"):
        checkpoint.load_legacy_folder(legacy)
    (legacy / "state.json").unlink()
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*legacy: it lacks state.json"):
        checkpoint.load_legacy_folder(legacy)


def test_no_second_checkpoint_writer():
    """Optimizer state is written and read in llgbm/core/checkpoint.py only."""
    offenders = [str(p.relative_to(ROOT)) for pkg in ("llgbm", "geomlib") for p in (ROOT / pkg).rglob("*.py")
                 if p.name != "checkpoint.py" and ("adam_state_tensors" in p.read_text() or "load_adam_state" in p.read_text()
                                                   or "optimizer.safetensors\"" in p.read_text().replace("'", '"')
                                                   and "load_legacy_folder" not in p.read_text())]
    assert offenders == []
