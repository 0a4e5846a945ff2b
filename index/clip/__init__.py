"""mmkb's own open_clip configs and the trainer for the shipped image/text embedder."""
import json
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "model_configs"
CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
RESIZE_MODES = ("squash", "shortest")
# The shipped embedder: 64 px, warm-started from the 32 px `mmkb-clip-tiny` weights (the default
# until 2026-11-27) and trained 5.5 minutes on one GPU (README, "Entity recognition").
# `mmkb-clip-tiny` stays a config; its weights are in git history (commit d78a51b).
DEFAULT_CONFIG = "mmkb-clip-tiny-64"


def register_configs() -> None:
    """Make mmkb's JSON configs known to `open_clip.create_model_and_transforms`."""
    import open_clip

    known = set(open_clip.list_models())
    if any(path.stem not in known for path in CONFIG_DIR.glob("*.json")):
        open_clip.add_model_config(CONFIG_DIR)


def shipped_checkpoint(name: str) -> Path | None:
    """The trained weights shipped for one of mmkb's configs, if present."""
    path = CHECKPOINT_DIR / name / "open_clip_model.safetensors"
    return path if path.exists() else None


def export_config(weights: str | Path | None) -> dict | None:
    """The `open_clip_config.json` an export writes beside its weights ({model_cfg, preprocess_cfg});
    None for an open_clip pretrained tag, or when the file is missing or not open_clip's format."""
    if not weights or not Path(weights).is_file():
        return None
    try:
        cfg = json.loads((Path(weights).parent / "open_clip_config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def resize_mode_of(weights: str | Path | None) -> str | None:
    """The resize mode the weights were trained with, from the export's `open_clip_config.json`
    beside them; None when it does not say (open_clip's default applies)."""
    try:
        return (export_config(weights) or {}).get("preprocess_cfg", {}).get("resize_mode")
    except AttributeError:  # not open_clip's format
        return None
