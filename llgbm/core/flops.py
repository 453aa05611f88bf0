"""The FLOPs a whole process does, counted as it runs: how much of the machine's peak a notebook
uses over its wall time (issue 30), not only its hot paths in isolation (the bench).

`start(path)` wraps `torch.nn.Linear.forward` (the class's, so every Linear in every model counts,
and restored by `stop`): each call adds 2·in·out FLOPs per row of its input, and, when it runs with
grad enabled, the backward it implies: the same again for the input's gradient when the input needs
one and again for the weight's gradient when the weight does (a frozen base weight under LoRA needs
none, so a LoRA step counts forward + input gradients, as autograd computes them). peft's LoRA
layers are made of `nn.Linear`s, so their matmuls count too. Only Linear calls pay for the count (a
global module hook, the first version, made every module call take torch's slow path and slowed
module-heavy code by tens of percent). Not counted: attention scores and any matmul outside an
`nn.Linear` (both small here), a subclass that overrides `forward` (bitsandbytes' 4-bit layers),
calls inside torch.compile'd code, and a backward that never runs after a grad-enabled forward
(counted as if it ran). Padding counts as executed: the counts are FLOPs done, an upper bound on
useful ones.

The counts go to `path` (JSON) at most every `WRITE_EVERY_S` seconds while counting and at exit, so
a run that dies keeps all but its last seconds. torch is imported only when counting starts: the
runner reads the files without it."""
from __future__ import annotations

import atexit
import json
import time
from pathlib import Path

from llgbm.core.utils import atomic_write_json

WRITE_EVERY_S = 30.0
_CHECK_EVERY = 4096          # hook calls between looks at the clock
_state: dict = dict(path=None, forward=0.0, backward=0.0, calls=0, started=0.0, written=0.0, original=None, atexit=False)


def start(path: Path | str) -> None:
    """Count from now on into `path` (a fresh count; a second call closes the first file and counts afresh
    into the new one)."""
    import torch   # lazy: the runner reads counts without torch

    flush()                                   # the count so far stays with the file it was counting into
    _state.update(path=Path(path), forward=0.0, backward=0.0, calls=0, started=time.monotonic(), written=0.0)
    if _state["original"] is None:
        linear, compiling, grad_enabled = torch.nn.Linear, torch.compiler.is_compiling, torch.is_grad_enabled
        original = linear.forward

        def forward(self, input):
            if not compiling():
                f = 2.0 * input.numel() * self.out_features
                _state["forward"] += f
                if grad_enabled():
                    _state["backward"] += f * (input.requires_grad + self.weight.requires_grad)
                _state["calls"] += 1
                if _state["calls"] % _CHECK_EVERY == 0 and time.monotonic() - _state["written"] > WRITE_EVERY_S:
                    flush()
            return original(self, input)
        _state["original"] = original
        linear.forward = forward
        if not _state["atexit"]:
            atexit.register(flush)
            _state["atexit"] = True
    flush()


def stop() -> None:
    """Write the last counts and put `nn.Linear.forward` back (tests; a notebook counts until its kernel exits)."""
    flush()
    if _state["original"] is not None:
        import torch   # lazy: started means torch is loaded
        torch.nn.Linear.forward = _state["original"]
        _state["original"] = None
    _state["path"] = None


def counts() -> dict:
    """The counts so far: forward, backward and total FLOPs, the wall seconds since `start`."""
    return dict(forward_flops=_state["forward"], backward_flops=_state["backward"],
                flops=_state["forward"] + _state["backward"], linear_calls=_state["calls"],
                seconds=round(time.monotonic() - _state["started"], 3) if _state["started"] else 0.0)


def flush() -> None:
    if _state["path"] is not None:
        _state["written"] = time.monotonic()
        atomic_write_json(_state["path"], counts())


def read(path: Path | str) -> dict | None:
    """The counts a run wrote to `path`, or None when it wrote none."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None
