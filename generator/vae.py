"""A small high-compression convolutional VAE (latent diffusion, Rombach et al., arXiv 2112.10752).

Seedream 4.0 (arXiv 2509.20427) runs its DiT over the latents of a high-compression VAE to cut
the number of image tokens; this is that VAE at a size that trains on two CPU cores. The
encoder starts with a space-to-channel step (pixel-unshuffle, as in DC-AE, arXiv 2410.10733)
so no convolution runs at full resolution; the decoder ends with the matching pixel-shuffle.
`f8c16`: 64x64x3 → 8x8x16 (12x fewer numbers, 64 tokens for a 64x64 image).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class VAEConfig:
    latent_channels: int = 16
    channels: tuple[int, ...] = (48, 96, 128)   # per level after the 2x space-to-channel; 2 ** len = factor / 2
    blocks: int = 1
    decoder_blocks: int | None = None            # residual blocks per decoder level; None: `blocks`
    scale: float = 1.0                           # latent std, set after training; DiT sees z / scale
    shift: float = 0.0

    @property
    def dec_blocks(self) -> int:
        return self.blocks if self.decoder_blocks is None else self.decoder_blocks

    @property
    def factor(self) -> int:
        return 2 ** len(self.channels)

    def to_dict(self) -> dict:
        return asdict(self)


VAE_PRESETS: dict[str, VAEConfig] = {
    "tiny": VAEConfig(latent_channels=4, channels=(8, 16, 16)),
    "f8c16": VAEConfig(latent_channels=16, channels=(48, 96, 128)),
    "f4c8": VAEConfig(latent_channels=8, channels=(48, 96)),
    "f8c16-large": VAEConfig(latent_channels=16, channels=(96, 192, 256), blocks=2),
}


class ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, ch), nn.Conv2d(ch, ch, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(8, ch), nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch = cfg.channels
        self.stem = nn.Conv2d(12, ch[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, c in enumerate(ch):
            layers += [ResBlock(c) for _ in range(cfg.blocks)]
            if i + 1 < len(ch):
                layers.append(nn.Conv2d(c, ch[i + 1], 3, stride=2, padding=1))
        self.body = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.GroupNorm(8, ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(self.stem(F.pixel_unshuffle(x, 2))))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch = cfg.channels[::-1]
        self.stem = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, c in enumerate(ch):
            layers += [ResBlock(c) for _ in range(cfg.dec_blocks)]
            if i + 1 < len(ch):
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, ch[i + 1], 3, padding=1)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.GroupNorm(8, ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], 12, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.out(self.body(self.stem(z))), 2)


class VAE(nn.Module):
    """Images in [-1, 1] (B, 3, H, W) ↔ latents (B, C, H/f, W/f), normalised by config scale/shift."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-20, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction from a posterior sample, and the posterior (for the KL term)."""
        mean, logvar = self.posterior(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        return self.decoder(z), mean, logvar

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised posterior mean: what the DiT models."""
        return (self.posterior(x)[0] - self.cfg.shift) / self.cfg.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z * self.cfg.scale + self.cfg.shift).clamp(-1, 1)


def deepen_decoder(vae: VAE, blocks: int) -> VAE:
    """A copy of `vae` whose decoder has `blocks` residual blocks per level, computing the same function:
    the old blocks keep their weights and each new one starts as the identity (its last convolution
    zeroed), so a decoder fine-tune starts from where the old decoder was."""
    cfg = VAEConfig(**{**vae.cfg.to_dict(), "decoder_blocks": blocks})
    old_blocks = vae.cfg.dec_blocks
    if blocks < old_blocks:
        raise ValueError(f"the decoder already has {old_blocks} blocks per level; deepening cannot go to {blocks}")
    new = VAE(cfg)
    new.encoder.load_state_dict(vae.encoder.state_dict())
    new.decoder.stem.load_state_dict(vae.decoder.stem.state_dict())
    new.decoder.out.load_state_dict(vae.decoder.out.state_dict())
    old_layers, new_layers = list(vae.decoder.body), list(new.decoder.body)
    j = 0
    for layer in old_layers:  # same order of layer kinds; after each level's old blocks, skip the new ones
        while isinstance(new_layers[j], ResBlock) and not isinstance(layer, ResBlock):
            nn.init.zeros_(new_layers[j].conv2.weight); nn.init.zeros_(new_layers[j].conv2.bias)
            j += 1
        new_layers[j].load_state_dict(layer.state_dict())
        j += 1
    for layer in new_layers[j:]:
        nn.init.zeros_(layer.conv2.weight); nn.init.zeros_(layer.conv2.bias)
    return new


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
