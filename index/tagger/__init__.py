"""The multi-label tagger for curation: CMA + ASGE (arXiv 1912.07872) over the image embedder."""
from index.tagger.labels import display, record_labels, vocabulary
from index.tagger.train import DEFAULT_TAGGER, Tagger, TaggerConfig, metrics, train_tagger

__all__ = ["DEFAULT_TAGGER", "Tagger", "TaggerConfig", "display", "metrics", "record_labels", "train_tagger",
           "vocabulary"]
