"""mmkb's own open_clip configs and the trainer for the shipped image/text embedder."""
import json
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "model_configs"
CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
RESIZE_MODES = ("squash", "shortest")


def register_configs() -> None:
    """Make mmkb's JSON configs known to `open_clip.create_model_and_transforms`."""
    import open_clip

    if "mmkb-clip-tiny" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


def shipped_checkpoint(name: str) -> Path | None:
    """The trained weights shipped for one of mmkb's configs, if present."""
    path = CHECKPOINT_DIR / name / "open_clip_model.safetensors"
    return path if path.exists() else None


def resize_mode_of(weights: str | Path | None) -> str | None:
    """The resize mode the weights were trained with, from the export's `open_clip_config.json`
    beside them; None when it does not say (open_clip's default applies)."""
    if not weights or not Path(weights).is_file():  # an open_clip pretrained tag, or nothing
        return None
    path = Path(weights).parent / "open_clip_config.json"
    try:
        return json.loads(path.read_text()).get("preprocess_cfg", {}).get("resize_mode")
    except (OSError, ValueError, AttributeError):  # missing or not open_clip's format
        return None
