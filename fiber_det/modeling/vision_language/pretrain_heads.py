"""Heads and losses of the coarse stage: poolers, ITM / MLM heads, ITC with global negatives,
hard-negative sampling (coarse_grained_spec.md sections a.5, a.6, b).

Module and attribute names follow the released checkpoint (`cross_modal_*_pooler.dense`,
`itm_score.fc`, `mlm_score.transform.{dense,LayerNorm}`, `mlm_score.decoder`, `mlm_score.bias`)
so the coarse rename table in `fiber_det/checkpoint.py` stays a prefix map.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.utils import comm
from torch import nn


class Pooler(nn.Module):
    """Dense + tanh on one vector per sample: (B, D) -> (B, D)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(features))


class ITMHead(nn.Module):
    """Image-text matching classifier on `cls_feats`: (B, 2H) -> (B, 2); column 1 = "match"."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(input_size, 2)

    def forward(self, cls_feats: torch.Tensor) -> torch.Tensor:
        return self.fc(cls_feats)


class MLMTransform(nn.Module):
    """Dense -> GELU (erf) -> LayerNorm, BERT's prediction-head transform."""

    def __init__(self, hidden_size: int, layer_norm_eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)  # noqa: N815 (ckpt name)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(hidden)))


class MLMHead(nn.Module):
    """Masked-token logits from fused text features: (B, L, H) -> (B, L, V). Not weight-tied.

    The original builds this head from a separate RobertaConfig, so its LayerNorm eps is
    1e-12 rather than RoBERTa's 1e-5 (coarse_grained_spec.md b.3, f.15).
    """

    def __init__(self, hidden_size: int, vocab_size: int, layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        self.transform = MLMTransform(hidden_size, layer_norm_eps)
        self.decoder = nn.Linear(hidden_size, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, text_feats: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(text_feats)) + self.bias


def init_head_weights(module: nn.Module) -> None:
    """The original's head init: Linear / Embedding weights N(0, 0.02), zero biases, unit LN."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def scale_grad(tensor: torch.Tensor, factor: float) -> torch.Tensor:
    """Same value, gradient multiplied by `factor` on the way back."""
    if factor == 1 or not tensor.requires_grad:
        return tensor
    return tensor.detach() + factor * (tensor - tensor.detach())


def gather_keep_local_grad(
    tensor: torch.Tensor, global_loss: bool = False
) -> tuple[torch.Tensor, int]:
    """Concatenate `tensor` (B_r, ...) over all processes; only the local rows keep gradient.

    Ranks may hold different B_r. Returns the global tensor (sum B_r, ...) and the offset of
    this process's rows in it. With `global_loss`, every process computes the same loss on the
    gathered rows and gets gradient only through its own rows: that share is scaled by the
    world size so that DDP's gradient average equals the one-process gradient of the global
    batch (parameters used outside the gathered rows, e.g. the temperature, already get the
    full gradient on every process and must not be scaled).
    """
    world_size = comm.get_world_size()
    if world_size == 1:
        return tensor, 0
    sizes = torch.tensor([tensor.shape[0]], device=tensor.device)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world_size)]
    dist.all_gather(all_sizes, sizes)
    all_sizes = [int(s.item()) for s in all_sizes]
    padded = tensor.new_zeros((max(all_sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor.detach()
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    rank = comm.get_rank()
    pieces = [g[:n] for g, n in zip(gathered, all_sizes, strict=True)]
    pieces[rank] = scale_grad(tensor, world_size) if global_loss else tensor
    return torch.cat(pieces), sum(all_sizes[:rank])


def contrastive_logits(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    temperature: torch.Tensor,
    image_queue: torch.Tensor | None = None,
    text_queue: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """i2t (N, N + Q) and t2i (N, N + Q) logits of L2-normalised features (N, D), queues (Q, D)."""
    text_columns = text_feats if text_queue is None else torch.cat([text_feats, text_queue])
    image_columns = image_feats if image_queue is None else torch.cat([image_feats, image_queue])
    return (
        image_feats @ text_columns.t() / temperature,
        text_feats @ image_columns.t() / temperature,
    )


def contrastive_loss(logits_i2t: torch.Tensor, logits_t2i: torch.Tensor) -> torch.Tensor:
    """Mean of the i2t and t2i cross-entropies, positives on the diagonal of the first N columns."""
    targets = torch.arange(logits_i2t.shape[0], device=logits_i2t.device)
    return (F.cross_entropy(logits_i2t, targets) + F.cross_entropy(logits_t2i, targets)) / 2


def sample_hard_negatives(
    logits: torch.Tensor, forbidden: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One column per row drawn with probability softmax(logits) over the allowed columns.

    logits: (N, M) similarity logits; forbidden: (N, M) bool (the positive and every pair of
    the same image). Returns (N,) column indices, never a forbidden one (VLMo / ALBEF sampling,
    coarse_grained_spec.md b.2, without the original's leak of the positive through +1e-9).
    """
    if bool(forbidden.all(dim=1).any()):
        row = int(forbidden.all(dim=1).nonzero()[0])
        raise ValueError(
            f"no allowed hard negative for row {row}: the global batch needs captions of at "
            "least two different images"
        )
    weights = logits.detach().float().masked_fill(forbidden, float("-inf")).softmax(dim=1)
    weights = torch.where(forbidden, torch.zeros_like(weights), weights + 1e-9)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def sample_random_negatives(
    forbidden: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One column per row drawn uniformly from the allowed columns of `forbidden` (N, M) bool.

    Returns (N,) indices, never a forbidden one: the random false image of the ITM fine-tune
    (`draw_false_image=1`, coarse_grained_spec.md b.2), never an image with the row's image id.
    """
    return sample_hard_negatives(
        torch.zeros(forbidden.shape, device=forbidden.device), forbidden, generator
    )


def random_match_labels(
    batch_size: int, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B,) long ITM labels: exactly B // 2 ones (kept pairs) at random rows, zeros elsewhere
    (rows whose image gets replaced), as the original's random-negative ITM (spec b.2)."""
    order = torch.randperm(batch_size, generator=generator).to(device)
    return (order < batch_size // 2).long()


def same_image_mask(row_image_ids: torch.Tensor, column_image_ids: torch.Tensor) -> torch.Tensor:
    """(N, M) bool: True where a row's image id equals a column's image id."""
    return row_image_ids[:, None] == column_image_ids[None, :]


class FeatureQueue(nn.Module):
    """Ring buffer of detached past ITC features (Q, D) with their image ids (Q,).

    Only the filled part is ever read, so no random entry acts as a negative (the original's
    un-normalised `randn` init gives an ITC loss near 50 at the start, spec f.2). The buffers
    are persistent so that `--resume` continues with the same queue.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("image_feats", torch.zeros(size, dim))
        self.register_buffer("text_feats", torch.zeros(size, dim))
        self.register_buffer("image_ids", torch.zeros(size, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def contents(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Filled (image features (F, D), text features (F, D), image ids (F,))."""
        filled = int(self.filled)
        return self.image_feats[:filled], self.text_feats[:filled], self.image_ids[:filled]

    @torch.no_grad()
    def enqueue(self, image_feats: torch.Tensor, text_feats: torch.Tensor, image_ids) -> None:
        """Write N rows at the pointer, wrapping around; the newest `size` rows are kept."""
        count = min(image_feats.shape[0], self.size)
        rows = (int(self.pointer) + torch.arange(count, device=self.pointer.device)) % self.size
        self.image_feats[rows] = image_feats[-count:].detach().to(self.image_feats.dtype)
        self.text_feats[rows] = text_feats[-count:].detach().to(self.text_feats.dtype)
        self.image_ids[rows] = image_ids[-count:]
        self.pointer.fill_((int(self.pointer) + count) % self.size)
        self.filled.fill_(min(int(self.filled) + count, self.size))
