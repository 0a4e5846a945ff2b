"""POST /v1/tags: the labels the curation tagger suggests for an image (what `mmkb curate tag` stores)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from api.deps import ERRORS, ServicesDep, read_image, unavailable

router = APIRouter()


@router.post("/v1/tags", responses=ERRORS)
def tags(services: ServicesDep, image: Annotated[UploadFile, File()],
         top: Annotated[int, Form(ge=1, le=50)] = 5,
         threshold: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0) -> dict:
    """Labels most probable first (at most `top`, each at least `threshold`): the shipped tagger, averaged
    with the labels of the image index's nearest entities when the index was built with the tagger's
    embedder and the configured layout weight (`knn` says whether it did), as `mmkb curate tag` scores an
    entity's images."""
    from index.curate import tag_images
    from index.tagger.labels import display

    picture = read_image(image)
    try:
        tagger = services.run(lambda: services.tagger)
    except FileNotFoundError as err:
        raise unavailable(err) from None
    probs, with_knn = services.run(tag_images, tagger, [picture], services.reference)
    probs = probs[0]
    order = [int(j) for j in probs.argsort()[::-1][:top] if probs[j] >= threshold]
    return {"tagger": tagger.name, "knn": with_knn,
            "labels": [{"label": tagger.labels[j], "display": display(tagger.labels[j]),
                        "probability": round(float(probs[j]), 4)} for j in order]}
