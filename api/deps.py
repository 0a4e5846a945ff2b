"""What the HTTP routes share: the models and the index, loaded once on first use, and the one thread
that runs them.

Every model call runs on one worker thread (`Services.run`), in turn: the models already use every
CPU thread torch has, and a second OpenMP team started from another thread competes with the first
one's spinning workers — on 2 cores the DiT took 1.4 s per image from FastAPI's thread pool against
0.75 s from a single thread (measured).
"""
from __future__ import annotations

import io
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

from fastapi import Depends, HTTPException, Request, UploadFile
from PIL import Image, UnidentifiedImageError

MAX_UPLOAD_BYTES = 10 << 20
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
# For the OpenAPI schema and /docs: the answers other than 200 and 422 that the routes give.
ERRORS = {400: {"description": "bad input; the detail says what was wrong"},
          503: {"description": "the index is not built (the detail names the command), or the server lacks a file or "
                                "cannot load a model its settings name"}}
# A field that must not be empty, declared with a default "" so that an empty field from a page's form
# gets the route's own 400 that says so, not FastAPI's 422 "Field required": /docs shows it as required.
NEEDED = {"x-needed": True}
log = logging.getLogger("mmkb.api")


class Services:
    """Lazily loaded MMKB-RAG pipeline, generator pipelines and grounder over one reference index.
    The models load on the model thread (`run`); the index is made once, under a lock, for every thread."""

    def __init__(self, vlm: str | None = None, dit: str | None = None) -> None:
        self.vlm_name, self.dit_name = vlm, dit
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmkb-models")
        self._lock = threading.Lock()
        self._rag = None
        self._reference = None
        self._grounder = None
        self._generators: dict[tuple[bool, bool], object] = {}
        self._tagger = None

    def run(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) on the model thread, after the calls before it; its result or its error."""
        return self._worker.submit(fn, *args, **kwargs).result()

    @property
    def reference(self):
        with self._lock:
            if self._reference is None:
                from index.search import ReferenceIndex

                self._reference = ReferenceIndex.from_settings()
            return self._reference

    @property
    def rag(self):
        if self._rag is None:
            from rag.pipeline import MMKBRAG
            from rag.vlm import load_vlm

            self._rag = MMKBRAG(load_vlm(self.vlm_name), self.reference)
        return self._rag

    @property
    def grounder(self):
        if self._grounder is None:
            from rag.grounding import Grounder

            self._grounder = Grounder(self.reference)
        return self._grounder

    @property
    def tagger(self):
        if self._tagger is None:
            from index.tagger import Tagger

            self._tagger = Tagger(embedder=self.reference.image_embedder())
        return self._tagger

    def generator(self, fast: bool = False, int8: bool = False):
        if (fast, int8) not in self._generators:
            from generator.pipeline import GenerationPipeline

            pipe = GenerationPipeline.from_pretrained(self.dit_name, fast=fast, int8=int8)
            with self._lock:
                self._generators[fast, int8] = pipe
        return self._generators[fast, int8]

    def loaded(self) -> dict:
        """Which models are loaded (for /health, from any thread)."""
        with self._lock:
            return {"vlm": self._rag is not None, "tagger": self._tagger is not None,
                    "generators": [f"fast={f}, int8={q}" for f, q in self._generators]}


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def read_image(upload: UploadFile, what: str = "image") -> Image.Image:
    """An uploaded file as a decoded PIL image, or a 400/413 that says what was wrong."""
    data = upload.file.read(MAX_UPLOAD_BYTES + 1)
    if not data:
        raise HTTPException(400, f"the {what} {upload.filename!r} is empty: upload a PNG or JPEG file")
    if len(data) > MAX_UPLOAD_BYTES:
        raise HTTPException(413, f"the {what} {upload.filename!r} is over {MAX_UPLOAD_BYTES >> 20} MB")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError):
        raise HTTPException(400, f"the {what} {upload.filename!r} is not an image that can be read: "
                                 "upload a PNG, JPEG or WebP file") from None
    return img


def plain(obj):
    """JSON-ready: numpy scalars and arrays (in tags and scores) as Python numbers and lists."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def unavailable(err: Exception) -> HTTPException:
    """A 503 for what the server lacks (a checkpoint, an image file): the detail without its paths, which
    go to the server's log."""
    log.error("unavailable: %s", err)
    return HTTPException(503, f"the server is missing a file it needs ({type(err).__name__}); its log says which")


def index_missing(err: Exception) -> HTTPException:
    """A 503 for a question asked before the index is built, naming the command that builds it."""
    return HTTPException(503, f"{err} (or `mmkb demo`, which ingests the starter KB and builds it)")
