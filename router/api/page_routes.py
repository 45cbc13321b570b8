"""A page of the HTTP server served from its package's ``static`` folder: the HTML at ``path``
and its assets at ``path/assets/{name}``, read once at start, with the page's headers."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources

from fastapi import APIRouter, HTTPException, Response


def add_page_routes(
    router: APIRouter,
    *,
    package: str,
    path: str,
    page: str,
    assets: Mapping[str, str],
    headers: Mapping[str, str],
) -> None:
    """``GET path`` answers ``static/page``; ``GET path/assets/{name}`` one of ``assets``
    (file name -> media type), any other name 404."""
    static = resources.files(package) / "static"
    page_html = (static / page).read_bytes()
    contents = {name: (static / name).read_bytes() for name in assets}

    def serve_page() -> Response:
        return Response(page_html, media_type="text/html; charset=utf-8", headers=dict(headers))

    def serve_asset(name: str) -> Response:
        if name not in contents:
            raise HTTPException(status_code=404, detail="no such asset")
        return Response(contents[name], media_type=assets[name], headers=dict(headers))

    router.add_api_route(path, serve_page, methods=["GET"], include_in_schema=False)
    router.add_api_route(
        f"{path}/assets/{{name}}", serve_asset, methods=["GET"], include_in_schema=False
    )
