"""Tiny generator checkpoints (random weights) for fast CPU tests."""
from __future__ import annotations

import pytest
import torch

from generator.checkpoint import save_weights
from generator.dit import DIT_PRESETS, DiT
from generator.vae import VAE, VAE_PRESETS


def perturb(model: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Random non-zero weights everywhere (adaLN-Zero makes a fresh model output exactly 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """(dit folder, vae folder) of tiny random models, the DiT pointing at the VAE."""
    root = tmp_path_factory.mktemp("gen-ckpt")
    torch.manual_seed(0)
    vae = VAE(VAE_PRESETS["tiny"])
    vae_dir = save_weights(vae, {"kind": "vae", **vae.cfg.to_dict()}, root / "vae-tiny")
    cfg = DIT_PRESETS["tiny"]
    cfg.latent_channels = VAE_PRESETS["tiny"].latent_channels
    dit = perturb(DiT(cfg))
    dit_dir = save_weights(dit, {"kind": "dit", **cfg.to_dict(), "vae": str(vae_dir),
                                 "text_encoder": "all-MiniLM-L6-v2", "default_steps": 2}, root / "dit-tiny")
    cfg.latent_channels = 16  # presets are shared objects: restore
    return dit_dir, vae_dir
