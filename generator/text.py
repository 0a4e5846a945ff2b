"""Frozen text features for the DiT: token-level last hidden states of the shipped MiniLM."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch


class TextEncoder:
    """Captions → (B, T, 384) token features + (B, T) mask; an LRU cache saves re-encoding repeats."""

    def __init__(self, name: str | None = None, max_tokens: int = 40, cache_size: int = 50_000,
                 device: str | torch.device = "cpu") -> None:
        from index.embedders import load_text_embedder

        st = load_text_embedder(name).model
        self.device = torch.device(device)
        self.tokenizer, self.bert = st.tokenizer, st[0].auto_model.eval().to(self.device)
        self.dim = int(self.bert.config.hidden_size)
        self.max_tokens, self.cache_size = max_tokens, cache_size
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> list[torch.Tensor]:
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items()}
        h = self.bert(**tok).last_hidden_state
        return [h[i, : int(tok["attention_mask"][i].sum())].to(torch.float16) for i in range(len(texts))]

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            for t, f in zip(missing, self._encode(missing)):
                self.cache[t] = f
        feats = []
        for t in texts:
            self.cache.move_to_end(t)
            feats.append(self.cache[t])
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        n = max(f.shape[0] for f in feats)
        out = torch.zeros(len(texts), n, self.dim, device=self.device)
        mask = torch.zeros(len(texts), n, dtype=torch.bool, device=self.device)
        for i, f in enumerate(feats):
            out[i, : f.shape[0]], mask[i, : f.shape[0]] = f.float(), True
        return out, mask
