"""VLM backends behind one interface (`rag.vlm.base.VLM`), resolved by name or path."""
from __future__ import annotations

from pathlib import Path

SHIPPED = Path(__file__).parent / "checkpoints"


def load_vlm(name: str | None = None, device: str | None = None):
    """`mmkb-reader` (shipped), a path to an mmkb-reader export, or `hf:<path>` / a path to any
    transformers image-text-to-text model (Qwen2-VL, LLaVA …)."""
    from index.config import get_settings

    name = name or getattr(get_settings(), "vlm", None) or "mmkb-reader"
    device = device or get_settings().torch_device()
    if name == "mmkb-reader":
        path = SHIPPED / "mmkb-reader"
        if not (path / "heads.safetensors").exists():
            raise FileNotFoundError(f"{path} has no trained mmkb-reader: run `mmkb train vlm`")
        from rag.vlm.reader_vlm import ReaderVLM

        return ReaderVLM.load(path, device)
    if name.startswith("hf:") or (Path(name) / "config.json").exists() and not (Path(name) / "heads.safetensors").exists():
        from rag.vlm.hf import HFVLM

        return HFVLM.load(name.removeprefix("hf:"), device)
    path = Path(name)
    if (path / "heads.safetensors").exists():
        from rag.vlm.reader_vlm import ReaderVLM

        return ReaderVLM.load(path, device)
    raise ValueError(f"unknown VLM {name!r}: use mmkb-reader, a path to an mmkb-reader export, or hf:<path>")
