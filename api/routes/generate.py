"""POST /v1/generate: knowledge-grounded image generation (the `mmkb generate` of HTTP).

Without uploaded references, the entities the prompt names are found in the index and their images
condition the DiT (rag.grounding); with references, they are used as given. Images come back as
base64 PNGs beside the provenance: the caption the DiT got, which entities and images were used,
seeds, steps and timings."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

from fastapi import APIRouter, File, Form, HTTPException, UploadFile

from api.deps import ERRORS, NEEDED, ServicesDep, plain, read_image, unavailable
from generator import MAX_SEED
from index.files import png_data_url

router = APIRouter()
MAX_N = 8


@router.post("/v1/generate", responses=ERRORS)
def generate(services: ServicesDep,
             prompt: Annotated[str, Form(description="what to draw, e.g. the flag of Tuvalu on a green background; "
                                                     "with `image`, the edit, e.g. replace the flag with the flag of Japan",
                                         json_schema_extra=NEEDED)] = "",
             refs: Annotated[Optional[list[UploadFile]], File(description="up to 3 reference images")] = None,
             image: Annotated[Optional[UploadFile], File(description="an image to edit (a scene the DiT drew)")] = None,
             n: Annotated[int, Form(ge=1, le=MAX_N)] = 1, steps: Annotated[Optional[int], Form(ge=1, le=100)] = None,
             seed: Annotated[int, Form(ge=0, le=MAX_SEED, description="the first image's; each next one counts up")] = 0,
             fast: Annotated[bool, Form(description="the few-step distilled model (4 steps)")] = False,
             ground: Annotated[bool, Form(description="find the entities the prompt names in the index")] = True) -> dict:
    """Images for a prompt, or an edit of `image`: the entities it names are drawn from the index's images,
    or from `refs`."""
    from rag.grounding import generate_grounded

    if not prompt.strip():
        raise HTTPException(400, "the prompt is empty: say what to change, e.g. change the background to green"
                            if image is not None else
                            "the prompt is empty: say what to draw, e.g. the flag of Tuvalu on a green background")
    pictures = [read_image(r, "reference image") for r in refs or []]
    source = read_image(image, "image to edit") if image is not None else None

    def render():
        pipe = services.generator(fast=fast)
        options = dict(n=n, steps=steps, seed=seed, image=source)
        if ground and not pictures:
            return generate_grounded(pipe, services.grounder, prompt, **options)
        return pipe(prompt, refs=pictures, **options)

    try:
        result = services.run(render)
    except ValueError as err:
        raise HTTPException(400, str(err)) from None
    except FileNotFoundError as err:
        raise unavailable(err) from None
    home = services.reference.store.home  # where the store's image paths begin
    return {"images": [png_data_url(img) for img in result.images],
            "provenance": without_server_paths(plain(result.provenance), home)}


def without_server_paths(obj, home: Path):
    """`obj` with every path inside the server's data home made relative to it ("images/ab/….png"): a
    client learns which stored image was used, not where the server keeps its files."""
    if isinstance(obj, dict):
        return {k: without_server_paths(v, home) for k, v in obj.items()}
    if isinstance(obj, list):
        return [without_server_paths(v, home) for v in obj]
    if isinstance(obj, str) and obj.startswith("/") and Path(obj).is_relative_to(home):
        return str(Path(obj).relative_to(home))
    return obj
