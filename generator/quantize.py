"""Post-training quantization for CPU inference: int8 dynamic (weights int8, activations quantized
per batch at run time) for every Linear layer of the DiT; bf16 as the alternative cast."""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` whose nn.Linear layers run in int8 (torch dynamic quantization, fbgemm/qnnpack)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def to_bf16(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(torch.bfloat16).eval()
