"""FiberImageTextModel: the shared body of every coarse-stage model (pre-training, VQA, NLVR2,
retrieval, captioning): the fused trunk, the cross-modal transforms and poolers, and pixel
normalisation (coarse_grained_spec.md a.5, a.6).

Module names follow the released checkpoint (`cross_modal_{text,image}_{transform,pooler}[_itc]`)
so the coarse rename table stays a prefix map. The `_itc` modules exist in every task model, as
in the original, even where only the fused path is used.
"""

import torch
import torch.nn.functional as F
from detectron2.structures import ImageList
from torch import nn

from fiber_det.modeling.backbone.fiber import FiberTrunk, ImagePrefix
from fiber_det.modeling.vision_language.pretrain_heads import Pooler, init_head_weights

__all__ = ["FiberImageTextModel", "image_text_config"]


def image_text_config(cfg) -> dict:
    """The base constructor arguments from cfg: trunk, hidden size, pixel statistics.

    The coarse Swin forces window = image size / 32 (coarse spec a.1), checked here."""
    pretrain, swin = cfg.MODEL.PRETRAIN, cfg.MODEL.FIBER.SWIN
    if swin.WINDOW_POLICY == "clamp" and swin.WINDOW_SIZE * 32 != pretrain.IMAGE_SIZE:
        raise ValueError(
            f"MODEL.FIBER.SWIN.WINDOW_SIZE {swin.WINDOW_SIZE} must be "
            f"MODEL.PRETRAIN.IMAGE_SIZE / 32 = {pretrain.IMAGE_SIZE / 32} (coarse spec a.1)"
        )
    return {
        "trunk": FiberTrunk(cfg),
        "hidden_size": pretrain.HIDDEN_SIZE,
        "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
        "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
    }


class FiberImageTextModel(nn.Module):
    """Trunk + the eight cross-modal transforms / poolers. Subclasses add heads and call
    `init_heads()` once they are built."""

    def __init__(
        self,
        *,
        trunk: FiberTrunk,
        hidden_size: int,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
    ) -> None:
        super().__init__()
        self.trunk = trunk
        text_width, image_width = trunk.text_hidden_size, trunk.image_channels["res5"]
        self.cross_modal_text_transform = nn.Linear(text_width, hidden_size)
        self.cross_modal_image_transform = nn.Linear(image_width, hidden_size)
        self.cross_modal_text_transform_itc = nn.Linear(text_width, hidden_size)
        self.cross_modal_image_transform_itc = nn.Linear(image_width, hidden_size)
        self.cross_modal_text_pooler = Pooler(hidden_size)
        self.cross_modal_image_pooler = Pooler(hidden_size)
        self.cross_modal_text_pooler_itc = Pooler(hidden_size)
        self.cross_modal_image_pooler_itc = Pooler(hidden_size)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    def init_heads(self) -> None:
        """The original's head init (N(0, 0.02), zero bias, unit LN) on everything but the trunk."""
        for name, module in self.named_children():
            if name != "trunk":
                module.apply(init_head_weights)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def text_pad_token_id(self) -> int:
        return self.trunk.text_pad_token_id

    def normalize_images(self, images: list[torch.Tensor]) -> torch.Tensor:
        """uint8 (3, H, W) images in the configured format -> (B, 3, H', W') normalised."""
        images = [(im.to(self.device).float() - self.pixel_mean) / self.pixel_std for im in images]
        return ImageList.from_tensors(images, self.trunk.size_divisibility).tensor

    def encode_image_itc(self, images: torch.Tensor) -> torch.Tensor:
        """Unimodal ITC embedding (B, H) of normalised images (B, 3, H, W)."""
        tokens = self.trunk(images, fuse=False).image["res5"].flatten(2).transpose(1, 2)
        pooled = self.cross_modal_image_transform_itc(tokens).mean(dim=1)
        return F.normalize(self.cross_modal_image_pooler_itc(pooled), dim=-1)

    def encode_text_itc(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unimodal ITC embedding (B, H) of captions (B, L): first token -> transform -> pooler."""
        first = self.trunk.encode_text(input_ids, mask).hidden[:, 0]
        pooled = self.cross_modal_text_pooler_itc(self.cross_modal_text_transform_itc(first))
        return F.normalize(pooled, dim=-1)

    def fused_features(
        self, prefix: ImagePrefix, input_ids: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Fused pass of k * B texts on B image prefixes: text_feats (N, L, H), image_feats
        (N, T, H) and cls_feats (N, 2H) = [text pooled, image pooled] (spec a.6)."""
        out = self.trunk.forward_fused(prefix, input_ids, mask)
        text_feats = self.cross_modal_text_transform(out.text.hidden)
        image_feats = self.cross_modal_image_transform(out.image_tokens)
        cls_feats = torch.cat(
            [
                self.cross_modal_text_pooler(text_feats[:, 0]),
                self.cross_modal_image_pooler(image_feats.mean(dim=1)),
            ],
            dim=-1,
        )
        return {"text_feats": text_feats, "image_feats": image_feats, "cls_feats": cls_feats}

    def fused_cls_feats(
        self, images: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Pooled fused features (B, 2H) of B (normalised image (B, 3, H, W), text (B, L)) pairs."""
        prefix = self.trunk.encode_image_prefix(images)
        return self.fused_features(prefix, input_ids, mask)["cls_feats"]
