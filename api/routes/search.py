"""POST /v1/search: the entities an image and/or a text match (the `mmkb index search` of HTTP)."""
from __future__ import annotations

from typing import Annotated, Optional

from fastapi import APIRouter, File, Form, HTTPException, UploadFile

from api.deps import ERRORS, ServicesDep, index_missing, read_image
from index.files import thumbnail_url

router = APIRouter()


@router.post("/v1/search", responses=ERRORS)
def search(services: ServicesDep, image: Annotated[Optional[UploadFile], File()] = None,
           text: Annotated[Optional[str], Form()] = None, k: Annotated[int, Form(ge=1, le=100)] = 5,
           kind: Annotated[Optional[str], Form(description="only entities of this kind, e.g. country")] = None,
           pictures: Annotated[bool, Form(description="add a small PNG (data URL) of each matched picture")] = False) -> dict:
    """Entities best first, each with its fused and per-modality scores and its best match (a section's text,
    or a picture's path under the server's data home)."""
    from index.search import IndexNotBuiltError, unknown_kinds

    picture = read_image(image) if image is not None else None
    text = (text or "").strip() or None
    if picture is None and text is None:
        raise HTTPException(400, "give an image, a text or both")
    kinds = [kind] if kind else None
    if why := unknown_kinds(kinds, list(services.reference.store.kinds())):
        raise HTTPException(400, why)
    try:
        hits = services.run(lambda: services.reference.search(text=text, image=picture, k=k, kinds=kinds))
    except IndexNotBuiltError as err:
        raise index_missing(err) from None
    home = services.reference.store.home
    out = [h.summary() for h in hits]
    if pictures:
        for hit in out:
            if hit["matched"]["modality"] == "image":
                hit["matched"]["thumbnail"] = thumbnail_url(home / hit["matched"]["path"])
    return {"hits": out}
