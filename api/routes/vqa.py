"""POST /v1/vqa: answer a question about an image with citations (the `mmkb ask` of HTTP)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile

from api.deps import ERRORS, NEEDED, ServicesDep, index_missing, plain, read_image, unavailable

router = APIRouter()


@router.post("/v1/vqa", responses=ERRORS)
def vqa(services: ServicesDep, image: Annotated[UploadFile, File(description="the picture asked about")],
        question: Annotated[str, Form(description="e.g. What is the capital of this country?",
                                              json_schema_extra=NEEDED)] = "",
        mode: Annotated[str, Form(description="no-rag, naive-rag or mmkb-rag")] = "mmkb-rag",
        ret: Annotated[bool, Form()] = True, srt: Annotated[bool, Form()] = True,
        mct: Annotated[bool, Form()] = True,
        familiarity_gate: Annotated[bool, Form(description="RET also retrieves for an entity new to the VLM, a "
                                                           "picture entities share, or a disagreeing entity tag")] = True,
        ret_closed_book: Annotated[bool, Form(description="RET's tag reads the closed-book answer's probability "
                                                          "too")] = True,
        confirm: Annotated[bool, Form(description="answer with the VLM's own answer when the first document "
                                                  "read states it")] = True,
        gamma: Annotated[float | None, Form(ge=0.0, le=1.0, description="RET's threshold γ: retrieve when "
                                            "P([Ret]) ≥ γ (unset: the server's, 0.4 by default)")] = None) -> dict:
    """The answer, the tags, whether it retrieved and why, and the documents it cites."""
    from index.search import IndexNotBuiltError

    picture = read_image(image)
    if not question.strip():
        raise HTTPException(400, "the question is empty")
    try:
        switches = {"familiarity_gate": familiarity_gate, "ret_closed_book": ret_closed_book}
        if not confirm:
            switches["confirm_threshold"] = None
        if gamma is not None:
            switches["gamma"] = gamma
        out = services.run(lambda: services.rag(picture, question, mode=mode, use_ret=ret, use_srt=srt, use_mct=mct,
                                                **switches))
    except IndexNotBuiltError as err:
        raise index_missing(err) from None
    except ValueError as err:
        raise HTTPException(400, str(err)) from None
    except FileNotFoundError as err:  # the VLM's checkpoint or an indexed image is missing
        raise unavailable(err) from None
    return plain(out.to_dict())
