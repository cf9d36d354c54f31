"""How a converted state dict fits a model: missing, unexpected and mis-shaped keys."""

import re
from dataclasses import dataclass, field

import torch

from fiber_det.checkpoint.rename import ConversionResult


@dataclass
class LoadCheck:
    """How a converted state dict fits a model: keys it lacks, keys it has in excess, and
    (key, checkpoint shape, model shape) for every shape mismatch."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shapes: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shapes)


def check_against_model(
    state_dict: dict[str, torch.Tensor],
    model_shapes: dict[str, tuple],
    may_lack: list[str] = (),
) -> LoadCheck:
    """Compare converted tensors with a model's `{name: shape}`; model keys matching a regex of
    `may_lack` (state the model starts without, e.g. a feature queue) are not missing."""
    return LoadCheck(
        missing=[
            k
            for k in model_shapes
            if k not in state_dict and not any(re.match(p, k) for p in may_lack)
        ],
        unexpected=[k for k in state_dict if k not in model_shapes],
        wrong_shapes=[
            (k, tuple(v.shape), tuple(model_shapes[k]))
            for k, v in state_dict.items()
            if k in model_shapes and tuple(v.shape) != tuple(model_shapes[k])
        ],
    )


def conversion_errors(
    result: ConversionResult, check: LoadCheck, sources: dict[str, str] | None = None
) -> list[str]:
    """One line per offending key: unconverted, missing, unexpected or of the wrong shape."""
    sources = sources or {}

    def named(key: str) -> str:
        return f"'{key}'" + (f" (from '{sources[key]}')" if key in sources else "")

    return (
        [f"unconverted (no rename rule): '{k}'" for k in result.unconverted]
        + [f"missing (the model has it, the checkpoint does not): '{k}'" for k in check.missing]
        + [f"unexpected (the model has no such key): {named(k)}" for k in check.unexpected]
        + [
            f"wrong shape: {named(k)} is {list(ours)} in the checkpoint, "
            f"{list(theirs)} in the model"
            for k, ours, theirs in check.wrong_shapes
        ]
    )
