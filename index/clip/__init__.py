"""mmkb's own open_clip configs and the trainer for the shipped image/text embedder."""
import json
import logging
from contextlib import contextmanager
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


class EmbedderSpecError(ValueError):
    """An embedder setting (MMKB_IMAGE_EMBEDDER, MMKB_TEXT_EMBEDDER, a tagger's --embedder) that names no
    usable model or weights."""


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
OPEN_CLIP_SCHEMAS = ("hf-hub:", "local-dir:")


def embedder_spec(spec: str) -> tuple[str, str | None]:
    """(open_clip model name, pretrained tag or weights file or None) from an image embedder setting:
    `NAME` (mmkb's shipped weights for its own configs), `NAME:TAG`, `NAME:FILE`, `NAME:FOLDER` or a bare
    `FOLDER` that `mmkb train clip` exported (its config.json names the model). Paths are checked here,
    model names and tags where open_clip loads them."""
    spec = spec.strip()
    if spec.startswith(OPEN_CLIP_SCHEMAS):  # open_clip's own `hf-hub:org/repo`, `local-dir:PATH`
        return spec, None
    bare = Path(spec).expanduser()
    if _path_like(spec) and bare.is_dir():
        try:
            name = json.loads((bare / "config.json").read_text())["train_cfg"]["config"]
        except (OSError, ValueError, KeyError, TypeError):
            raise EmbedderSpecError(f"{spec} is a folder without the config.json `mmkb train clip` writes: give "
                                    f"MODEL:{spec}, MODEL the open_clip model its weights are for") from None
        return name, str(_weights_in(bare, spec))
    name, _, pretrained = spec.partition(":")
    if not name:
        raise EmbedderSpecError(f"{spec!r} names no model: give NAME, NAME:TAG, NAME:FILE or NAME:FOLDER")
    if not pretrained:
        if (_path_like(spec) or spec.endswith(WEIGHT_SUFFIXES)) and bare.is_file():
            raise EmbedderSpecError(f"{spec} is a weights file: give MODEL:{spec}, MODEL the open_clip model it is for")
        if _path_like(name) or name.endswith(WEIGHT_SUFFIXES):
            raise EmbedderSpecError(f"no such folder {spec}: give a folder `mmkb train clip` exported, or MODEL:FILE "
                                    "for a weights file")
        return name, None
    weights = Path(pretrained).expanduser()
    if weights.is_dir():
        return name, str(_weights_in(weights, spec))
    if weights.is_file():
        return name, str(weights)
    if "/" in pretrained or pretrained.endswith(WEIGHT_SUFFIXES):
        raise EmbedderSpecError(f"no such weights file or folder {pretrained}")
    return name, pretrained


def _path_like(spec: str) -> bool:
    """Written as a path (a bare word is a model name, even where a folder of that name is at hand)."""
    return "/" in spec or "\\" in spec or spec.startswith((".", "~"))


def canonical_spec(spec: str) -> str:
    """One spelling of an image embedder setting, as indexes record it: the model name alone for mmkb's
    shipped weights, else `name:` the resolved weights path or the tag (so `NAME:FOLDER`, `FOLDER` and a
    relative or absolute path to the file name the same weights)."""
    try:
        name, pretrained = embedder_spec(spec)
    except EmbedderSpecError:
        return spec.strip()
    if pretrained is None:
        return name
    weights = Path(pretrained)
    if not weights.is_file():
        return f"{name}:{pretrained}"
    shipped = shipped_checkpoint(name)
    return name if shipped and shipped.resolve() == weights.resolve() else f"{name}:{weights.resolve()}"


def _weights_in(folder: Path, spec: str) -> Path:
    """The one weights file in an exported folder."""
    files = [f for f in sorted(folder.iterdir()) if f.suffix in WEIGHT_SUFFIXES and f.is_file()]
    preferred = folder / "open_clip_model.safetensors"
    if preferred.is_file():
        return preferred
    if len(files) != 1:
        raise EmbedderSpecError(f"{spec}: the folder holds {len(files)} weights files "
                                f"({', '.join(f.name for f in files) or 'none'}); name one with MODEL:FILE")
    return files[0]


class _NotRandomInit(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextmanager
def random_init_expected():
    """Quiet open_clip's "No pretrained weights loaded … initialized randomly" warning (logged on the root
    logger) where mmkb makes a model without weights on purpose: training, then loading the weights."""
    root, quiet = logging.getLogger(), _NotRandomInit()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def own_configs() -> list[str]:
    """The names of mmkb's own open_clip configs."""
    return [path.stem for path in CONFIG_DIR.glob("*.json")]


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
