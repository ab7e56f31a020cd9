"""The web interface (paper 5.2): a static single-page app served by the ingress itself.

``mount_ui(app)`` adds ``GET|HEAD /`` (the page) and ``GET|HEAD /ui/{name}`` (its script, style
sheet and icon, all in ``serve/ui/``). Nothing comes from a CDN, so the interface works offline
and behind a firewall; the page talks to the ``/v1`` API with the same API key as any client.

The static files themselves are public: a browser cannot send ``Authorization`` before the page
has asked for a key, and they hold no data. Every job, result and artefact stays behind the API's
access control.

Caching: the page is ``no-cache`` (revalidated with its ``ETag``, so an upgrade shows at once);
it links each asset as ``ui/<name>?v=<content hash>``, and an asset fetched with its current hash
is ``immutable`` for a year. Files are read once, at mount time, into memory: requests never
touch the file system, so no request path can reach a file outside the set.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response

from serve.problems import ProblemError

__all__ = [
    "ASSET_PREFIX",
    "CONTENT_SECURITY_POLICY",
    "UI_DIR",
    "UiAsset",
    "load_assets",
    "mount_docs",
    "mount_ui",
]

#: Where the page and its assets live in the source tree (shipped with the package).
UI_DIR = Path(__file__).with_name("ui")
#: URL path under which the assets are served.
ASSET_PREFIX = "/ui/"

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".woff2": "font/woff2",
}
_INDEX = "index.html"
#: ``{{v:app.js}}`` in the page becomes the content hash of ``app.js``.
_VERSION_TOKEN = re.compile(r"\{\{v:([A-Za-z0-9_./-]+)\}\}")
_IMMUTABLE = "public, max-age=31536000, immutable"

#: Only this origin's scripts and styles; images and video may also be ``blob:`` URLs (the page
#: fetches artefacts with the API key and shows them from memory when keys are required).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob:; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


@dataclass(frozen=True)
class UiAsset:
    """One static file: its bytes, ``Content-Type`` and content hash (16 hex digits)."""

    body: bytes
    content_type: str
    digest: str

    @classmethod
    def of(cls, body: bytes, content_type: str) -> UiAsset:
        return cls(body, content_type, hashlib.sha256(body).hexdigest()[:16])

    @property
    def etag(self) -> str:
        return f'"{self.digest}"'


def load_assets(root: Path = UI_DIR) -> tuple[UiAsset, dict[str, UiAsset]]:
    """The page (with asset hashes filled in) and the assets by name (``"app.js"``,
    ``"fonts/x.woff2"``), read from ``root``.

    Raises:
        FileNotFoundError: ``root`` has no ``index.html``.
        ValueError: the page names an asset that is not there, or a file has an unknown type.
    """
    assets: dict[str, UiAsset] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        if name == _INDEX:
            continue
        content_type = _CONTENT_TYPES.get(path.suffix.lower())
        if content_type is None:
            raise ValueError(f"{path}: no content type for {path.suffix!r}; add it to serve.ui")
        assets[name] = UiAsset.of(path.read_bytes(), content_type)

    def version(match: re.Match[str]) -> str:
        asset = assets.get(match.group(1))
        if asset is None:
            raise ValueError(f"{root / _INDEX} links {match.group(1)!r}, which is not in {root}")
        return asset.digest

    page = _VERSION_TOKEN.sub(version, (root / _INDEX).read_text(encoding="utf-8"))
    return UiAsset.of(page.encode("utf-8"), _CONTENT_TYPES[".html"]), assets


def _answer(request: Request, asset: UiAsset, cache_control: str, **extra: str) -> Response:
    """``asset`` as a response, or 304 when the client's ``If-None-Match`` matches."""
    headers = {
        **_COMMON_HEADERS,
        **extra,
        "Cache-Control": cache_control,
        "ETag": asset.etag,
    }
    matches = request.headers.get("if-none-match", "")
    if asset.etag in {tag.strip() for tag in matches.split(",")} or matches.strip() == "*":
        return Response(status_code=304, headers=headers)
    headers["Content-Length"] = str(len(asset.body))
    body = b"" if request.method == "HEAD" else asset.body
    return Response(body, headers=headers, media_type=asset.content_type)


def mount_ui(app: FastAPI, root: Path = UI_DIR) -> None:
    """Serve the web interface on ``app``: the page at ``/``, its files at ``/ui/<name>``.

    Reads the files in ``root`` once, now (see :func:`load_assets` for what it raises). The
    routes stay out of the OpenAPI document; an unknown asset is a ``not-found`` problem.
    """
    page, assets = load_assets(root)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def ui_page(request: Request) -> Response:
        return _answer(
            request,
            page,
            "no-cache",
            **{"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Frame-Options": "DENY"},
        )

    @app.api_route(ASSET_PREFIX + "{name:path}", methods=["GET", "HEAD"], include_in_schema=False)
    def ui_asset(request: Request, name: str) -> Response:
        asset = assets.get(name)
        if asset is None:
            raise ProblemError.of("not-found", f"the web interface has no file {name!r}")
        current = request.query_params.get("v") == asset.digest
        # Only a URL that names the current content may be cached for good; any other asks
        # again, so an old page never pairs with a new script or the other way round.
        return _answer(request, asset, _IMMUTABLE if current else "no-cache")


#: Swagger UI's files, from the installed ``fastapi-offline`` package (MIT).
DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}


def mount_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI over ``/openapi.json`` with its script, style and icon served here
    (``/docs/assets/<name>``), so that the page works where no CDN can be reached."""
    import importlib.resources

    from fastapi.openapi.docs import get_swagger_ui_html

    folder = importlib.resources.files("fastapi_offline") / "static"
    files = {name: (folder / name).read_bytes() for name in DOCS_ASSETS}
    base = "/docs/assets/"

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=base + "swagger-ui-bundle.js",
            swagger_css_url=base + "swagger-ui.css",
            swagger_favicon_url=base + "favicon.png",
        )

    @app.get(base + "{name}", include_in_schema=False)
    def docs_asset(name: str) -> Response:
        if name not in files:
            raise ProblemError.of("not-found", f"the API documentation has no file {name!r}")
        return Response(
            files[name],
            media_type=DOCS_ASSETS[name],
            headers={"Cache-Control": "public, max-age=86400"},
        )
