"""ASGE: label embeddings from the label co-occurrence graph (You et al., arXiv 1912.07872).

The paper builds a label graph from how often labels occur together in the training set and
learns one embedding per label so that the similarity of two labels' embeddings follows their
adjacency in that graph; the embeddings then guide the cross-modality attention (`model.py`).
Our reading: adjacency A[i, j] = (P(j | i) + P(i | j)) / 2 from co-occurrence counts, A[i, i] = 1;
embeddings E minimise the mean squared gap between cos(E_i, E_j) and A[i, j]. We start E from the
pretrained sentence embedder's vectors of the label words (all-MiniLM-L6-v2, shipped), so labels
that rarely co-occur still keep what the words mean; the paper does not say how it initialises.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def adjacency(y: np.ndarray) -> np.ndarray:
    """Symmetric co-occurrence adjacency of multi-hot targets `y` (samples × labels)."""
    y = (np.asarray(y) > 0).astype(np.float64)
    co = y.T @ y
    n = np.maximum(np.diag(co), 1.0)
    cond = co / n[:, None]  # P(j | i)
    a = (cond + cond.T) / 2
    np.fill_diagonal(a, 1.0)
    return a.astype(np.float32)


def asge(a: np.ndarray, init: np.ndarray, steps: int = 400, lr: float = 0.02, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Label embeddings (L × d, unit rows) whose cosine similarities follow the adjacency `a`.

    Returns the embeddings and a report: the mean squared gap before and after, and how well the
    learned similarities rank each label's graph neighbours (mean Spearman-free check: the share of
    labels whose most similar other label is one they co-occur with)."""
    torch.manual_seed(seed)
    target = torch.as_tensor(a, dtype=torch.float32)
    e = torch.nn.Parameter(torch.as_tensor(np.asarray(init, np.float32)).clone())
    opt = torch.optim.Adam([e], lr=lr)

    def gap() -> torch.Tensor:
        u = F.normalize(e, dim=1)
        return ((u @ u.T - target) ** 2).mean()

    with torch.no_grad():
        before = float(gap())
    for _ in range(steps):
        opt.zero_grad()
        loss = gap()
        loss.backward()
        opt.step()
    u = F.normalize(e.detach(), dim=1).numpy()
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    off = a.copy()
    np.fill_diagonal(off, 0.0)
    has_neighbour = off.max(axis=1) > 0
    nearest = sim.argmax(axis=1)
    hit = off[np.arange(len(a)), nearest] > 0
    report = {"gap_before": before, "gap_after": float(gap().detach()),
              "nearest_is_neighbour": float(hit[has_neighbour].mean()) if has_neighbour.any() else 0.0}
    return u.astype(np.float32), report
