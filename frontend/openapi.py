"""The OpenAPI document, as the APIs really answer: invalid parameters are 400s in each API's own body
(``frontend/errors.py``), never FastAPI's 422, and empty uploads are refused."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi


def api_schema(app: FastAPI, routes: list, title: str | None = None) -> dict:
    """The schema of ``routes`` (all of the app's, or one documented server's)."""
    schema = get_openapi(title=title or app.title, version=app.version, description=app.description, routes=routes)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    for component in schema.get("components", {}).get("schemas", {}).values():
        for field in component.get("properties", {}).values():
            # an upload field: an empty file is refused (400)
            if field.get("format") == "binary" or field.get("contentMediaType") == "application/octet-stream":
                field["minLength"] = 1
    for unused in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(unused, None)
    return schema


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = api_schema(app, app.routes)
        return app.openapi_schema

    app.openapi = openapi
