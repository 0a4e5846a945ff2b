"""Multi-image-conditioned diffusion transformer over VAE latents.

Implements, at small scale:
- DiT with adaLN-Zero conditioning (Peebles & Xie, arXiv 2212.09748);
- joint attention over one sequence [text tokens | target latent tokens | reference latent
  tokens] (MM-DiT, SD3, arXiv 2403.03206), with references entering as extra clean VAE-latent
  tokens, each image with its own index in a 3-D rotary position (index, row, col) — the
  design of Seedream 4.0 (arXiv 2509.20427) and FLUX.1 Kontext (arXiv 2506.15742);
- rectified-flow velocity prediction (Liu et al., arXiv 2209.03003; SD3's logit-normal t);
- a step-size input d for shortcut models (Frans et al., arXiv 2410.12557), so one network
  can take 1..16 Euler steps after distillation (generator/distill.py);
- classifier-free guidance (Ho & Salimans, arXiv 2207.12598) with separate text and
  reference scales (as InstructPix2Pix, arXiv 2211.09800, does for text and image).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

FLOW_LEVEL = 8  # step-size level meaning "instantaneous velocity" (d = 0); level k < 8 means d = 2**-k


@dataclass
class DiTConfig:
    width: int = 128
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    latent_channels: int = 16
    patch: int = 1
    text_dim: int = 384
    rope_axes: tuple[int, int, int] = (8, 12, 12)   # head dims given to (image index, row, col); sum = head dim
    rope_theta: float = 100.0
    qk_norm: bool = False   # RMSNorm on q, k bounds attention logits: stable at scale, but it kept the 2-core
                            # run from forming the sharp attention that copying a reference needs

    def to_dict(self) -> dict:
        return asdict(self)


DIT_PRESETS: dict[str, DiTConfig] = {
    "tiny": DiTConfig(width=64, depth=2, heads=2, rope_axes=(8, 12, 12)),
    "small": DiTConfig(width=128, depth=6, heads=4, rope_axes=(8, 12, 12)),       # a 35-minute run on 2 CPU cores
    "medium": DiTConfig(width=192, depth=6, heads=6, rope_axes=(8, 12, 12)),      # shipped (trained on a GPU)
    "base": DiTConfig(width=384, depth=12, heads=6, rope_axes=(16, 24, 24), qk_norm=True),      # GPU
    "large": DiTConfig(width=768, depth=24, heads=12, rope_axes=(16, 24, 24), qk_norm=True),    # GPU
}


def rope_angles(pos: torch.Tensor, axes: tuple[int, ...], theta: float) -> torch.Tensor:
    """(L, 3) integer positions → (L, head_dim / 2) rotation angles, one band of frequencies per axis."""
    out = []
    for i, dim in enumerate(axes):
        freqs = theta ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=pos.device) / dim)
        out.append(pos[:, i, None].float() * freqs)
    return torch.cat(out, dim=-1)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of x (B, H, L, D) by angles (L, D/2)."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = angles.cos(), angles.sin()
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).type_as(x)


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = scale * t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        hd = cfg.width // cfg.heads
        self.q_norm = nn.RMSNorm(hd) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(hd) if cfg.qk_norm else nn.Identity()
        self.proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor, angles: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(self.q_norm(q), angles), apply_rope(self.k_norm(k), angles)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).flatten(2))


class Block(nn.Module):
    """Pre-norm transformer block; adaLN-Zero: shift/scale/gate from the conditioning, gates start at 0."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        w = cfg.width
        self.norm1 = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(w, int(w * cfg.mlp_ratio)), nn.GELU(approximate="tanh"),
                                 nn.Linear(int(w * cfg.mlp_ratio), w))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(w, 6 * w))

    def forward(self, x: torch.Tensor, c: torch.Tensor, angles: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        s1, sc1, g1, s2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        x = x + g1[:, None] * self.attn(modulate(self.norm1(x), s1, sc1), angles, mask)
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), s2, sc2))


class DiT(nn.Module):
    """Velocity v(x_t, t, d | text, references) for the target latent x_t (B, C, H, W)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, p, c = cfg.width, cfg.patch, cfg.latent_channels
        assert sum(cfg.rope_axes) == w // cfg.heads, "rope_axes must split the head dimension"
        self.patch_in = nn.Linear(c * p * p, w)            # shared by the target and the references
        self.text_norm = nn.LayerNorm(cfg.text_dim, elementwise_affine=False)
        self.text_in = nn.Linear(cfg.text_dim, w)
        self.null_text = nn.Parameter(torch.zeros(1, 1, w))  # always present, so a dropped prompt is still a sequence
        self.t_embed = nn.Sequential(nn.Linear(256, w), nn.SiLU(), nn.Linear(w, w))
        self.d_embed = nn.Embedding(FLOW_LEVEL + 1, w)
        self.pool_in = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(w, 2 * w))
        self.out = nn.Linear(w, c * p * p)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.null_text, std=0.02)
        nn.init.zeros_(self.d_embed.weight)
        for blk in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(blk.ada[-1].weight); nn.init.zeros_(blk.ada[-1].bias)
        nn.init.zeros_(self.ada_out[-1].weight); nn.init.zeros_(self.ada_out[-1].bias)
        nn.init.zeros_(self.out.weight); nn.init.zeros_(self.out.bias)

    def patchify(self, z: torch.Tensor) -> torch.Tensor:
        p = self.cfg.patch
        return F.pixel_unshuffle(z, p).flatten(2).transpose(1, 2) if p > 1 else z.flatten(2).transpose(1, 2)

    def unpatchify(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        p = self.cfg.patch
        z = x.transpose(1, 2).unflatten(2, (h // p, w // p))
        return F.pixel_shuffle(z, p) if p > 1 else z

    @staticmethod
    def grid(index: int, h: int, w: int) -> torch.Tensor:
        r, c = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        return torch.stack([torch.full_like(r, index), r, c], dim=-1).flatten(0, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                refs: list[torch.Tensor] = (), ref_mask: torch.Tensor | None = None,
                level: torch.Tensor | None = None) -> torch.Tensor:
        """x (B,C,H,W); t (B,) in [0,1]; text (B,T,text_dim) with text_mask (B,T) bool (False = dropped/pad);
        refs: clean reference latents, each (B,C,h,w); ref_mask (B, len(refs)) bool; level (B,) step size."""
        b, _, h, w = x.shape
        p = self.cfg.patch
        txt = self.text_in(self.text_norm(text))
        tokens = [self.null_text.expand(b, -1, -1), txt, self.patch_in(self.patchify(x))]
        dev = x.device
        pos = [torch.zeros(1 + text.shape[1], 3, dtype=torch.long), self.grid(1, h // p, w // p)]
        keep = [torch.ones(b, 1, dtype=torch.bool, device=dev), text_mask.to(dev)]
        keep.append(torch.ones(b, (h // p) * (w // p), dtype=torch.bool, device=dev))
        for i, r in enumerate(refs):
            tokens.append(self.patch_in(self.patchify(r)))
            pos.append(self.grid(2 + i, r.shape[2] // p, r.shape[3] // p))
            kept = ref_mask[:, i].to(dev) if ref_mask is not None else torch.ones(b, dtype=torch.bool, device=dev)
            keep.append(kept[:, None].expand(-1, tokens[-1].shape[1]))
        seq = torch.cat(tokens, dim=1)
        keep = torch.cat(keep, dim=1)
        angles = rope_angles(torch.cat(pos).to(x.device), self.cfg.rope_axes, self.cfg.rope_theta)
        mask = None if bool(keep.all()) else keep[:, None, None, :]
        m = text_mask.to(dev, txt.dtype)[..., None]
        pooled = (txt * m).sum(1) / m.sum(1).clamp_min(1.0)
        level = level if level is not None else torch.full((b,), FLOW_LEVEL, dtype=torch.long, device=x.device)
        c = self.t_embed(timestep_embedding(t, 256).to(seq.dtype)) + self.d_embed(level) + self.pool_in(pooled)
        for blk in self.blocks:
            seq = blk(seq, c, angles, mask)
        start = 1 + text.shape[1]
        y = seq[:, start:start + (h // p) * (w // p)]
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        return self.unpatchify(self.out(modulate(self.norm_out(y), shift, scale)), h, w)


def guided_velocity(model: DiT, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                    refs: list[torch.Tensor] = (), text_scale: float = 1.0, ref_scale: float = 1.0,
                    level: torch.Tensor | None = None) -> torch.Tensor:
    """CFG with separate scales, one batched forward:
    v = v(∅,∅) + s_ref (v(ref,∅) − v(∅,∅)) + s_text (v(ref,text) − v(ref,∅)); without references
    v = v(∅) + s_text (v(text) − v(∅)). Scales of 1 need only the conditional branch."""
    b = x.shape[0]
    has_refs = len(refs) > 0
    if text_scale == 1.0 and (ref_scale == 1.0 or not has_refs):
        return model(x, t, text, text_mask, refs, None, level)
    k = 3 if has_refs else 2
    no_text = torch.zeros_like(text_mask)
    tm = torch.cat([text_mask, no_text, no_text][:k])
    rm = None
    if has_refs:
        on = torch.ones(b, len(refs), dtype=torch.bool, device=x.device)
        off = torch.zeros_like(on)
        rm = torch.cat([on, on, off])
    lv = None if level is None else level.repeat(k)
    v = model(x.repeat(k, 1, 1, 1), t.repeat(k), text.repeat(k, 1, 1), tm,
              [r.repeat(k, 1, 1, 1) for r in refs], rm, lv).chunk(k)
    if has_refs:
        full, ref_only, uncond = v
        return uncond + ref_scale * (ref_only - uncond) + text_scale * (full - ref_only)
    full, uncond = v
    return uncond + text_scale * (full - uncond)


@torch.no_grad()
def euler_sample(model: DiT, noise: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                 refs: list[torch.Tensor] = (), steps: int = 50, text_scale: float = 1.0,
                 ref_scale: float = 1.0, shortcut: bool = False) -> torch.Tensor:
    """Euler integration of dx/dt = v from t=0 (noise) to t=1 (data). With `shortcut`, the model is told
    the step size (steps must be a power of two ≤ 2**(FLOW_LEVEL-1))."""
    x, b = noise, noise.shape[0]
    if shortcut:
        lvl = int(math.log2(steps))
        if 2 ** lvl != steps or lvl >= FLOW_LEVEL:
            raise ValueError(f"a shortcut model takes 1, 2, 4, … {2 ** (FLOW_LEVEL - 1)} steps, not {steps}")
        level = torch.full((b,), lvl, dtype=torch.long, device=noise.device)
    else:
        level = None
    for i in range(steps):
        t = torch.full((b,), i / steps, device=noise.device)
        x = x + guided_velocity(model, x, t, text, text_mask, refs, text_scale, ref_scale, level) / steps
    return x
