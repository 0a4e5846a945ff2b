"""The CMA tagger: cross-modality attention over the image embedder's feature maps (arXiv 1912.07872).

The frozen open_clip image tower gives visual features at several places: its last two stages'
feature maps (for the shipped ModifiedResNet at 64 px: 4×4 and 2×2 cells) and its pooled
embedding (one more cell). Each source is projected to one feature width (`proj`, the visual
features), and a small MLP, the paper's cross-modality transformation (CMT), maps every cell into
the label-embedding space. For label k the attention over the cells is the softmax of the scaled
cosine between the label's ASGE embedding and each projected cell (CMA); the label's aggregated
feature is the attention-weighted sum of the visual features, and a per-label linear classifier
scores it. Trained with binary cross-entropy, one output per label.

Where this differs from the paper: the attention map is a softmax over the cells with a learned
temperature (the paper normalises its cosine map its own way), and the cells of every scale share one
attention map, where the paper's multi-scale model (MS-CMA) runs CMA per scale and fuses the scores.
With 21 cells in all at 64 px, one map over every scale is what this input size leaves.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class CMATagger(nn.Module):
    """Label scores from visual feature cells guided by fixed (ASGE) or learned label embeddings."""

    def __init__(self, in_dims: Sequence[int], label_embeddings: torch.Tensor, dim: int = 256,
                 learn_labels: bool = False) -> None:
        super().__init__()
        n_labels, label_dim = label_embeddings.shape
        self.in_dims = list(in_dims)
        self.proj = nn.ModuleList(nn.Sequential(nn.Linear(c, dim), nn.LayerNorm(dim)) for c in in_dims)
        self.cmt = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, label_dim))
        if learn_labels:
            self.label_embeddings = nn.Parameter(label_embeddings.clone())
        else:
            self.register_buffer("label_embeddings", label_embeddings.clone())
        self.log_scale = nn.Parameter(torch.tensor(2.3))  # softmax sharpness, e^2.3 ≈ 10
        self.weight = nn.Parameter(torch.randn(n_labels, dim) * dim ** -0.5)
        self.bias = nn.Parameter(torch.full((n_labels,), -3.0))  # most labels are absent

    def cells(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Projected visual cells (B × cells × dim) from maps (B×C×H×W) or vectors (B×C)."""
        out = []
        for proj, f in zip(self.proj, features):
            f = f.float()
            f = f.flatten(2).transpose(1, 2) if f.dim() == 4 else f[:, None, :]
            out.append(proj(f))
        return torch.cat(out, dim=1)

    def forward(self, features: Sequence[torch.Tensor], with_attention: bool = False):
        v = self.cells(features)                                   # B × T × dim
        z = F.normalize(self.cmt(v), dim=-1)                       # CMT: into label space
        e = F.normalize(self.label_embeddings, dim=-1)             # L × label_dim
        attn = torch.softmax(self.log_scale.exp() * torch.einsum("btd,ld->blt", z, e), dim=-1)
        agg = torch.einsum("blt,btd->bld", attn, v)                # category-wise features
        logits = (agg * self.weight).sum(-1) + self.bias
        return (logits, attn) if with_attention else logits


class LinearTagger(nn.Module):
    """The baseline: one logistic output per label on the pooled image embedding alone."""

    def __init__(self, dim: int, n_labels: int) -> None:
        super().__init__()
        self.head = nn.Linear(dim, n_labels)
        nn.init.constant_(self.head.bias, -3.0)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.head(F.normalize(features[-1].float(), dim=-1) * 10.0)
