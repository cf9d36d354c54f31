"""Shared pieces of FIBER's classification adapters, VQA and NLVR2 (coarse_grained_spec.md c.1,
c.2): the task classifier, and freezing what their fused pass never reaches.

The classifier is Linear -> LayerNorm -> GELU (erf) -> Linear, an `nn.Sequential` so that its
parameters are `.0`, `.1` and `.3`: the released `vqa_classifier.*` / `nlvr2_classifier.*` keys.
"""

from torch import nn

__all__ = ["ClassifierHead", "freeze_unreached_parameters"]


class ClassifierHead(nn.Sequential):
    """(N, in_features) -> (N, num_classes) through a `hidden_size` LayerNorm + GELU layer."""

    def __init__(
        self, in_features: int, hidden_size: int, num_classes: int, layer_norm_eps: float = 1e-5
    ) -> None:
        if min(in_features, hidden_size, num_classes) < 1:
            raise ValueError(
                f"classifier sizes must be positive, got in_features={in_features}, "
                f"hidden_size={hidden_size}, num_classes={num_classes}"
            )
        super().__init__(
            nn.Linear(in_features, hidden_size),
            nn.LayerNorm(hidden_size, eps=layer_norm_eps),
            nn.GELU(),
            nn.Linear(hidden_size, num_classes),
        )


def freeze_unreached_parameters(model: nn.Module) -> list[str]:
    """Set requires_grad False on the parameters of a FiberImageTextModel that a fused-pass-only
    task never uses: the `*_itc` transforms and poolers, the final Swin norm (unfused path only)
    and the last text layer's output LayerNorm when the fused path skips it. They keep their
    checkpoint values, as in the original where they get no gradient, and DDP needs no search
    for unused parameters. Returns the frozen names."""
    modules = [
        getattr(model, f"cross_modal_{side}_{kind}_itc")
        for side in ("text", "image")
        for kind in ("transform", "pooler")
    ]
    unreached = [p for module in modules for p in module.parameters()]
    unreached += model.trunk.parameters_off_the_fused_path()
    frozen = {id(p) for p in unreached}
    names = [name for name, p in model.named_parameters() if id(p) in frozen]
    for parameter in unreached:
        parameter.requires_grad_(False)
    return names
