"""mmkb's own open_clip configs and the trainer for the shipped image/text embedder."""
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "model_configs"
CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"


def register_configs() -> None:
    """Make mmkb's JSON configs known to `open_clip.create_model_and_transforms`."""
    import open_clip

    if "mmkb-clip-tiny" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


def shipped_checkpoint(name: str) -> Path | None:
    """The trained weights shipped for one of mmkb's configs, if present."""
    path = CHECKPOINT_DIR / name / "open_clip_model.safetensors"
    return path if path.exists() else None
