"""The HTTP API's reference page (GET /docs): written from the OpenAPI schema as one self-contained page,
so it works offline; FastAPI's own Swagger page loads its scripts and styles from a CDN."""
from __future__ import annotations

import html
import json


def _type_text(schema: dict) -> str:
    """A field's type as people read it: "integer 1–8", "file", "list of file", "string or null"."""
    if "anyOf" in schema:
        return " or ".join(_type_text(s) for s in schema["anyOf"] if s.get("type") != "null")
    if schema.get("type") == "array":
        return "list of " + _type_text(schema.get("items", {}))
    if schema.get("contentMediaType") == "application/octet-stream" or schema.get("format") == "binary":
        return "file"
    kind = schema.get("type", "any")
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None or high is not None:
        kind += f" {'' if low is None else f'{low:g}'}–{'' if high is None else f'{high:g}'}"
    if "enum" in schema:
        kind += ": " + ", ".join(map(str, schema["enum"]))
    return kind


def reference_page(spec: dict) -> str:
    """The API reference as one self-contained page: each route with its form fields and answers."""
    from index.files import html_page

    schemas = spec.get("components", {}).get("schemas", {})
    parts = []
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            rows = []
            for param in op.get("parameters", []):
                rows.append((param["name"], _type_text(param.get("schema", {})), param.get("required", False),
                             None, param.get("description", "")))
            for content in op.get("requestBody", {}).get("content", {}).values():
                body = content.get("schema", {})
                body = schemas.get(body.get("$ref", "").rsplit("/", 1)[-1], body)
                required = set(body.get("required", []))
                for name, field in body.get("properties", {}).items():
                    rows.append((name, _type_text(field), name in required or field.get("x-needed", False),
                                 field.get("default"),
                                 field.get("description", "")))
            table = "".join(
                f"<tr><td><code>{html.escape(n)}</code></td><td>{html.escape(t)}</td>"
                f"<td>{'required' if req else '' if d is None else 'default ' + html.escape(json.dumps(d))}</td>"
                f"<td>{html.escape(desc)}</td></tr>" for n, t, req, d, desc in rows)
            answers = ", ".join(f"{code} {html.escape(r.get('description', ''))}"
                                for code, r in op.get("responses", {}).items())
            parts.append(f"<h2><code>{method.upper()} {html.escape(path)}</code></h2>"
                         f"<p>{html.escape(op.get('description') or op.get('summary', ''))}</p>"
                         + (f"<table><tr><th>field</th><th>type</th><th></th><th>meaning</th></tr>{table}</table>"
                            if rows else "")
                         + f"<p class='p'>answers: {answers}; forms are multipart/form-data</p>")
    intro = (f"{html.escape(spec.get('info', {}).get('summary', ''))} The schema itself: "
             "<a href='/openapi.json'>/openapi.json</a>; a page to try the API: <a href='/'>/</a>.")
    return html_page(f"{spec.get('info', {}).get('title', 'API')} API reference", intro, "".join(parts))
