"""The HTTP API and its web page: `mmkb serve`, or `uvicorn api.app:app`.

    POST /v1/vqa       image + question → answer, tags, citations          (mmkb ask)
    POST /v1/generate  prompt [+ reference images] → PNGs + provenance     (mmkb generate)
    POST /v1/search    image and/or text → entities                        (mmkb index search)
    POST /v1/tags      image → suggested labels (curation tagger)          (mmkb curate tag)
    GET  /health       what the index holds, whether it is stale, and which models are loaded
    GET  /             a page to try all three
    GET  /docs         the API reference, from the OpenAPI schema (/openapi.json), with no script or
                       stylesheet from the internet: FastAPI's own Swagger page loads both from a CDN
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from api.deps import FORM_TYPES, Services, ServicesDep
from api.reference import reference_page
from api.routes import generate, search, tags, vqa
from index.clip import EmbedderSpecError
from index.store import MODALITIES

PAGE = Path(__file__).with_name("static") / "index.html"


def create_app(services: Services | None = None) -> FastAPI:
    app = FastAPI(title="mmkb", summary="Multimodal knowledge-based RAG: KB-VQA with citations and "
                                          "knowledge-grounded image generation over one reference index.",
                  docs_url=None, redoc_url=None)
    app.state.services = services or Services()
    for module in (vqa, generate, search, tags):
        app.include_router(module.router)

    @app.middleware("http")
    async def forms_only(request: Request, call_next):
        """The routes read form fields: a JSON body would reach them as no fields at all and get a
        message about what is missing, so it is refused here saying what the routes take."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if request.method == "POST" and request.url.path.startswith("/v1/") and kind and kind not in FORM_TYPES:
            return JSONResponse({"detail": f"the body is {kind}: the routes take form fields, as multipart/form-data "
                                           "(curl -F text=Thimphu …) or application/x-www-form-urlencoded"},
                                status_code=415)
        return await call_next(request)

    @app.exception_handler(EmbedderSpecError)
    async def embedder_setting(request: Request, err: EmbedderSpecError) -> JSONResponse:
        """An embedder setting the server cannot load (a model name not in the local cache, weights of
        another model) is the server's to fix, not the request's."""
        return JSONResponse({"detail": f"the server cannot load its embedder: {err}"}, status_code=503)

    @app.get("/health")
    def health(services: ServicesDep) -> dict:
        store = services.reference.store
        active = {m: (v.count if v else None) for m in MODALITIES for v in [store.active_index(m)]}
        return {"status": "ok", "entities": store.stats()["entities"], "kinds": store.kinds(),
                "indexed": active, "stale": services.reference.stale(), "loaded": services.loaded()}

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> str:
        return reference_page(app.openapi())

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    return app


app = create_app()  # `uvicorn api.app:app`; nothing loads until the first request
