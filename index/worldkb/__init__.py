"""worldkb: the starter KB of countries and emoji, built from registry packages (real data only)."""
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
MANIFEST = DATA_DIR / "manifest.jsonl"
