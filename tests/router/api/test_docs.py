"""The index, Swagger UI and ReDoc pages and everything they load come from the router itself."""

from __future__ import annotations

import base64
import glob
import hashlib
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from router.api.app import ApiDependencies, Readiness, create_app
from router.metrics import Metrics
from router.store.database import SqliteDatabase
from tests.router.admin_page.support import bare_admin

REPO = Path(__file__).resolve().parents[3]
# Served by the index page, in this order: what a person or a monitoring system opens.
INDEX_LINKS = [
    "/worklist",
    "/admin",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/metrics",
    "/healthz",
    "/readyz",
]
# Content type and least size of what a docs page loads; the viewers' bundles are megabytes.
EXPECTED = {
    "script": ("text/javascript", 500_000),
    "stylesheet": ("text/css", 100_000),
    "icon": ("image/svg+xml", 200),
    "spec": ("application/json", 1_000),
}
SOURCES_WITHOUT_HOST = {"'self'", "'none'", "'unsafe-inline'", "data:", "blob:"}


@dataclass(frozen=True)
class Reference:
    kind: str  # script, stylesheet, icon, spec or link
    url: str


class _References(HTMLParser):
    """What a page makes the browser load or offers to open: src, href and ReDoc's spec-url."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[Reference] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        rel = values.get("rel", "")
        if tag == "script" and "src" in values:
            self.found.append(Reference("script", values["src"]))
        elif tag == "script":
            self._in_script = True
        elif tag == "link" and rel == "stylesheet":
            self.found.append(Reference("stylesheet", values["href"]))
        elif tag == "link" and "icon" in rel.split():
            self.found.append(Reference("icon", values["href"]))
        elif tag == "redoc":
            self.found.append(Reference("spec", values["spec-url"]))
        elif "href" in values:
            self.found.append(Reference("link", values["href"]))

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        # Swagger UI's start-up script: SwaggerUIBundle({url: '/openapi.json', ...}).
        if self._in_script:
            self.found += [Reference("spec", url) for url in re.findall(r"url: '([^']*)'", data)]


def references(html: str) -> list[Reference]:
    parser = _References()
    parser.feed(html)
    return parser.found


def inline_scripts(html: str) -> list[str]:
    return re.findall(r"<script>(.*?)</script>", html, re.DOTALL)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    db = SqliteDatabase(tmp_path / "radrouter.sqlite3")
    deps = ApiDependencies(
        db=db,
        metrics=Metrics(lambda: {}),
        readiness=lambda: Readiness(True, {"database": "ok"}),
        retry_dispatch=lambda _id: 0,
        retry_job=lambda _id: False,
        admin=bare_admin(db),
    )
    with TestClient(create_app(deps)) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("page", "kinds"),
    [("/docs", {"script", "stylesheet", "icon", "spec"}), ("/redoc", {"script", "icon", "spec"})],
)
def test_docs_page_loads_its_viewer_icon_and_spec_from_this_server(
    client: TestClient, page: str, kinds: set[str]
) -> None:
    html = client.get(page)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    found = references(html.text)
    assert {ref.kind for ref in found} == kinds, found

    for ref in found:
        assert ref.url.startswith("/") and not ref.url.startswith("//"), ref
        asset = client.get(ref.url)
        content_type, least_size = EXPECTED[ref.kind]
        assert asset.status_code == 200, ref
        assert asset.headers["content-type"].startswith(content_type), ref
        assert len(asset.content) >= least_size, ref
    spec = client.get(next(ref.url for ref in found if ref.kind == "spec")).json()
    assert spec["info"]["title"] == "radrouter" and "/studies" in spec["paths"]


@pytest.mark.parametrize("page", ["/", "/docs", "/redoc"])
def test_page_names_no_other_host(client: TestClient, page: str) -> None:
    html = client.get(page).text
    assert not re.search(r"(?i)\b(?:https?|wss?|ftp):", html), html
    assert not re.search(r"""["'(]//""", html), html  # protocol-relative: //cdn.example/x.js


def test_redoc_page_asks_for_no_google_fonts(client: TestClient) -> None:
    assert "fonts.googleapis.com" not in client.get("/redoc").text


def test_swagger_ui_page_turns_off_the_online_validator(client: TestClient) -> None:
    assert '"validatorUrl": null' in client.get("/docs").text


@pytest.mark.parametrize("page", ["/", "/docs", "/redoc"])
def test_page_policy_lets_the_browser_load_from_this_server_only(
    client: TestClient, page: str
) -> None:
    response = client.get(page)
    policy = response.headers["content-security-policy"]
    directives = {
        name: sources for name, *sources in (d.split() for d in policy.split(";") if d.strip())
    }
    assert directives["default-src"] == ["'self'"]
    for name, sources in directives.items():
        for source in sources:
            assert source in SOURCES_WITHOUT_HOST or source.startswith("'sha256-"), (name, source)
    # The one inline script (Swagger UI's start-up) runs because its hash is allowed, no other.
    hashes = {
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in inline_scripts(response.text)
    }
    allowed = {s for s in directives.get("script-src", []) if s.startswith("'sha256-")}
    assert allowed == hashes
    assert len(hashes) == (1 if page == "/docs" else 0)


def test_docs_pages_follow_the_proxy_prefix(tmp_path: Path) -> None:
    deps = ApiDependencies(
        db=SqliteDatabase(tmp_path / "radrouter.sqlite3"),
        metrics=Metrics(lambda: {}),
        readiness=lambda: Readiness(True, {}),
        retry_dispatch=lambda _id: 0,
        retry_job=lambda _id: False,
    )
    with TestClient(create_app(deps), root_path="/radrouter") as prefixed:
        for page in ("/docs", "/redoc"):
            urls = [ref.url for ref in references(prefixed.get(page).text)]
            assert urls and all(url.startswith("/radrouter/") for url in urls), urls


def test_index_links_every_page_and_endpoint_and_each_answers(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    found = references(page.text)
    assert [ref.url for ref in found if ref.kind == "link"] == INDEX_LINKS
    for ref in found:
        response = client.get(ref.url)
        assert response.status_code == 200, ref
        assert len(response.content) > 0, ref
    assert {ref.kind for ref in found} == {"stylesheet", "icon", "link"}


def test_index_says_what_each_link_is_for(client: TestClient) -> None:
    text = re.sub(r"\s+", " ", client.get("/").text)
    for words in (
        "worklist",
        "Administration",
        "Swagger UI",
        "ReDoc",
        "OpenAPI",
        "Prometheus",
        "liveness",
        "readiness",
    ):
        assert words in text, words


def test_asset_unchanged_since_the_last_load_is_answered_304(client: TestClient) -> None:
    first = client.get("/docs/assets/redoc.standalone.js")
    etag = first.headers["etag"]
    again = client.get("/docs/assets/redoc.standalone.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    other = client.get("/docs/assets/redoc.standalone.js", headers={"If-None-Match": '"x"'})
    assert other.status_code == 200 and other.content == first.content


@pytest.mark.parametrize(
    "name", ["README.md", "vendor/redoc/LICENSE", "..%2Fdocs.py", "index.html", "swagger-ui.js"]
)
def test_only_the_listed_assets_are_served(client: TestClient, name: str) -> None:
    assert client.get(f"/docs/assets/{name}").status_code == 404


def test_pages_for_people_stay_out_of_the_openapi_description(client: TestClient) -> None:
    paths = set(client.get("/openapi.json").json()["paths"])
    assert "/studies" in paths
    assert not paths & {"/", "/docs", "/redoc", "/docs/assets/{name}"}


def test_package_data_ships_every_static_file() -> None:
    package = REPO / "router" / "api"
    with (REPO / "pyproject.toml").open("rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["router.api"]
    shipped = {path for pattern in patterns for path in glob.glob(pattern, root_dir=package)}
    present = {
        str(path.relative_to(package)) for path in (package / "static").rglob("*") if path.is_file()
    }
    assert present - shipped == set()
    assert {
        "static/vendor/swagger-ui-dist/LICENSE",
        "static/vendor/swagger-ui-dist/NOTICE",
        "static/vendor/redoc/LICENSE",
    } <= shipped


def test_favicon_ico_is_the_icon_for_pages_that_name_none(client: TestClient) -> None:
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
    assert icon.content == client.get("/docs/assets/favicon.svg").content
