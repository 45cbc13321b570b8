"""The pages a person opens in a browser: the index at ``/``, Swagger UI and ReDoc.

FastAPI's own ``/docs`` and ``/redoc`` load Swagger UI and ReDoc from a CDN that hospital
networks block, so there they render blank. These pages load the same viewers from files shipped
in this package (``static/vendor/``, see its README), and their Content-Security-Policy lets the
browser contact no other host at all, not even for the logo ReDoc puts in its sidebar.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

OPENAPI_URL = "/openapi.json"
ASSETS_URL = "/docs/assets/"

# URL name -> (file under static/, media type). Only these files are served.
_ASSET_FILES = {
    "swagger-ui-bundle.js": (
        "vendor/swagger-ui-dist/swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
    ),
    "swagger-ui.css": ("vendor/swagger-ui-dist/swagger-ui.css", "text/css; charset=utf-8"),
    "redoc.standalone.js": ("vendor/redoc/redoc.standalone.js", "text/javascript; charset=utf-8"),
    "favicon.svg": ("favicon.svg", "image/svg+xml"),
    "index.css": ("index.css", "text/css; charset=utf-8"),
}
_INDEX_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
# Swagger UI and ReDoc style elements inline, draw icons as data: URLs and ReDoc searches in a
# blob: worker; everything else, the inline start-up script included (by hash), is this server's.
_DOCS_POLICY = (
    "default-src 'self'; script-src 'self' {script_hashes}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "base-uri 'none'; frame-ancestors 'none'"
)
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


@dataclass(frozen=True)
class _Asset:
    body: bytes
    media_type: str
    etag: str

    @classmethod
    def of(cls, body: bytes, media_type: str) -> _Asset:
        return cls(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def create_docs_router(*, title: str, openapi_url: str = OPENAPI_URL) -> APIRouter:
    """``/`` (index), ``/docs`` (Swagger UI), ``/redoc``, their assets under ``/docs/assets/``
    and ``/favicon.ico``.

    The app that includes this router must turn off FastAPI's own ``docs_url`` and ``redoc_url``.
    """
    router = APIRouter()
    static = resources.files("router.api") / "static"
    index_html = (static / "index.html").read_bytes()
    assets = {
        name: _Asset.of((static / path).read_bytes(), media_type)
        for name, (path, media_type) in _ASSET_FILES.items()
    }

    @router.get("/", include_in_schema=False)
    def index() -> Response:
        return Response(index_html, media_type="text/html; charset=utf-8", headers=_INDEX_HEADERS)

    @router.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> Response:
        root = _root_path(request)
        page = get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}favicon.svg",
            # The online validator badge would send the spec's URL to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )
        return _docs_page(bytes(page.body))

    @router.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> Response:
        root = _root_path(request)
        page = get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}favicon.svg",
            with_google_fonts=False,
        )
        return _docs_page(bytes(page.body))

    @router.get(ASSETS_URL + "{name}", include_in_schema=False)
    def asset(name: str, request: Request) -> Response:
        found = assets.get(name)
        if found is None:
            raise HTTPException(status_code=404, detail="no such asset")
        return _asset_response(found, request)

    @router.get("/favicon.ico", include_in_schema=False)
    def favicon(request: Request) -> Response:
        """For the pages that name no icon (the worklist, JSON in a browser tab)."""
        return _asset_response(assets["favicon.svg"], request)

    return router


def _root_path(request: Request) -> str:
    """The prefix a reverse proxy serves the app under, as FastAPI's own docs pages use it."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def _asset_response(asset: _Asset, request: Request) -> Response:
    # Revalidated on every load (the files change with a release, their URLs do not) and
    # answered with 304 when unchanged: the bundles are megabytes.
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if asset.etag in (tag.strip() for tag in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def _docs_page(html: bytes) -> Response:
    script_hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    headers = {
        "Content-Security-Policy": _DOCS_POLICY.format(script_hashes=script_hashes),
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }
    return Response(html, media_type="text/html; charset=utf-8", headers=headers)
