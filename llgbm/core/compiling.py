"""torch.compile for the lab's hot loops, as an execution option: the language model's decoder stack
(`models.backbone_and_head`) runs through inductor inside a `compiled_backbone` block and eagerly
again after it, so the shared base model is never left compiled for code that does not ask.

Compiled numerics equal eager ones within float tolerance, not bit for bit (tests/test_compiling.py);
`python -m llgbm.bench --compile` measures what it buys on each hot path and what the first call
costs to compile."""
from __future__ import annotations

import contextlib

from llgbm.core.models import backbone_and_head


def is_compiled(model) -> bool:
    """Whether `model`'s decoder stack currently runs compiled."""
    body, _ = backbone_and_head(model)
    return getattr(body, "_compiled_call_impl", None) is not None


@contextlib.contextmanager
def compiled_backbone(model, enabled: bool = True, dynamic: bool | None = None):
    """Compile `model`'s decoder stack (nn.Module.compile, inductor) for the block; restore eager
    after it, also on error. Nested blocks reuse the outer compilation. `dynamic` is torch.compile's:
    None lets it mark a dimension dynamic once a second shape shows up (one recompile), True starts
    dynamic. The first call inside the block pays the compile time."""
    if not enabled or is_compiled(model):
        yield model
        return
    body, _ = backbone_and_head(model)
    body.compile(dynamic=dynamic)
    try:
        yield model
    finally:
        body._compiled_call_impl = None    # what nn.Module.compile set: back to the eager forward
