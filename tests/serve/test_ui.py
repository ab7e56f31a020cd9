"""The web interface (``serve/ui.py``, ``serve/ui/``): how its files are served, over real HTTP on
loopback, and its views in a real Chromium driven by Playwright against the running service.

The browser is Debian's ``/usr/bin/chromium`` (``scripts/ensure-browser.sh`` installs it), never
a browser downloaded by Playwright. The browser tests share the session's Serve application on
local Ray (``serve_app`` in ``conftest.py``, which requires API keys, so the key prompt is part
of every flow); the untrained-weights warning is checked against the API on uvicorn with a
model directory that has no checkpoints. Screenshots of every view go to a pytest temporary
folder, and are also copied to ``$DFD_UI_SCREENSHOTS`` when that is set (for CI artefacts).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import httpx
import pytest
from fastapi import FastAPI

from pipeline.gallery import score_colour
from pipeline.model_access import LocalModels
from serve.config import ServiceConfig
from serve.problems import install_problem_handlers
from serve.ui import UI_DIR, load_assets, mount_ui
from tests.serve.conftest import (
    ServeApp,
    analysis_settings,
    local_service,
    uvicorn_server,
    wait_for,
    wait_job,
)
from tests.support.models import make_model_dir
from tests.support.videos import fit_frame, read_frames_at

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IMAGE = "faces/fr_two_people.jpg"
#: Three shots (paper 3.1 segmentation finds them; see tests/pipeline/test_analyze.py).
VIDEO = "videos/fr_short_hamilton_clip.mp4"
#: Seconds a job may take on the session's service (2 shared cores, tiny models).
JOB_TIMEOUT_S = 180


def pct(score: float) -> str:
    """The UI's rendering of a probability (``pct`` in app.js): truncated to 0.1%."""
    return f"{math.floor(score * 1000 + 1e-9) / 10:.1f}%"


def all_faces(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for s in result["shots"] for c in s["clusters"] for f in c["faces"]]


# ---------------------------------------------------------------------------------------------
# Serving the files (no browser)


@pytest.fixture(scope="module")
def ui_only() -> Iterator[str]:
    """A bare app with only the UI mounted (and problem+json errors), on loopback."""
    app = FastAPI()
    install_problem_handlers(app)
    mount_ui(app)
    with uvicorn_server(app) as url:
        yield url


def test_page_links_every_asset_by_its_content_hash(ui_only: str) -> None:
    r = httpx.get(ui_only + "/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache"
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "{{" not in r.text
    links = dict(re.findall(r'"ui/([\w./-]+)\?v=([0-9a-f]{16})"', r.text))
    assert set(links) == {"app.js", "style.css", "icon.svg"}
    for name, digest in links.items():
        assert digest == hashlib.sha256((UI_DIR / name).read_bytes()).hexdigest()[:16]


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("app.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ],
)
def test_assets_types_and_caching(ui_only: str, name: str, content_type: str) -> None:
    body = (UI_DIR / name).read_bytes()
    digest = hashlib.sha256(body).hexdigest()[:16]
    with httpx.Client(base_url=ui_only) as http:
        current = http.get(f"/ui/{name}", params={"v": digest})
        assert current.status_code == 200 and current.content == body
        assert current.headers["content-type"] == content_type
        assert current.headers["cache-control"] == "public, max-age=31536000, immutable"
        etag = current.headers["etag"]
        # Without (or with an old) hash the browser must ask again: never pair old and new files.
        for params in ({}, {"v": "0" * 16}):
            assert http.get(f"/ui/{name}", params=params).headers["cache-control"] == "no-cache"
        again = http.get(f"/ui/{name}", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        head = http.head(f"/ui/{name}")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(body))


def test_unknown_files_are_problems_and_nothing_else_is_reachable(ui_only: str) -> None:
    for path in ("/ui/nope.js", "/ui/", "/ui/..%2Fui.py", "/ui/index.html"):
        r = httpx.get(ui_only + path)
        assert r.status_code == 404, path
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["title"]


def test_assets_are_self_contained() -> None:
    """No CDN: nothing the page loads comes from another origin (it must work offline)."""
    page, assets = load_assets()
    texts = [page.body.decode()] + [a.body.decode() for a in assets.values()]
    external = re.compile(
        r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|url\(\s*["']?(?:https?:)?//|"""
        r"""@import|\bimport\b[^;\n]*["'](?:https?:)?//|fetch\(\s*["'](?:https?:)?//"""
    )
    for text in texts:
        assert not external.search(text)


def test_load_assets_fails_loudly(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text('<script src="ui/app.js?v={{v:app.js}}"></script>')
    with pytest.raises(ValueError, match=r"app\.js"):
        load_assets(tmp_path)
    (tmp_path / "app.js").write_text("1")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="content type"):
        load_assets(tmp_path)
    (tmp_path / "notes.txt").unlink()
    page, assets = load_assets(tmp_path)
    assert set(assets) == {"app.js"}
    assert assets["app.js"].digest.encode() in page.body


# ---------------------------------------------------------------------------------------------
# In a real browser


@dataclass
class Ui:
    """A browser tab on the UI, with what it logged; ``snap`` saves a screenshot."""

    page: Any
    base_url: str
    shots_dir: Path
    errors: list[str] = field(default_factory=list)

    def snap(self, name: str, *, full_page: bool = True) -> Path:
        path = self.shots_dir / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        extra = os.environ.get("DFD_UI_SCREENSHOTS")
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)
        return path

    def open(self, fragment: str = "#/", key: str | None = None) -> None:
        """Load the page at ``fragment``; answer the key prompt with ``key`` if one is given."""
        self.page.goto(f"{self.base_url}/{fragment}")
        if key is not None:
            self.enter_key(key)

    def enter_key(self, key: str) -> None:
        self.page.wait_for_selector("#key-dialog[open]")
        self.page.fill("#key-input", key)
        self.page.click("#key-submit")

    def submit_file(self, path: Path, *, force: bool = False) -> str:
        """Upload ``path`` through the file input; the job id from the URL it moves to."""
        self.page.wait_for_selector("#file", state="attached")
        if force:
            self.page.check("#force")
        self.page.set_input_files("#file", str(path))
        self.page.wait_for_url(re.compile(r"#/jobs/[A-Za-z0-9_-]+$"))
        return self.page.url.rsplit("/", 1)[1]

    def wait_result(self, media_type: str) -> None:
        self.page.wait_for_selector(
            f'#result[data-media-type="{media_type}"]', timeout=JOB_TIMEOUT_S * 1000
        )

    def wait_until(self, function: str, arg: Any = None, timeout: float = 60) -> Any:
        """Until the JavaScript ``function`` (of ``arg``) returns something truthy.

        Polled with ``evaluate`` rather than Playwright's ``wait_for_function``, which compiles
        its predicate with ``eval`` inside the page, and the page's CSP forbids that.
        """
        return wait_for(lambda: self.page.evaluate(function, arg), timeout=timeout)

    def wait_loaded(self, selector: str) -> None:
        """Until the image at ``selector`` has been decoded."""
        self.wait_until(
            "(sel) => { const i = document.querySelector(sel);"
            " return i && i.complete && i.naturalWidth > 0; }",
            selector,
        )

    def assert_no_script_errors(self) -> None:
        assert self.errors == [], self.errors


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure-browser.sh")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def shots_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ui-screenshots")


def new_ui(browser: Any, base_url: str, shots_dir: Path) -> Ui:
    # A fresh context per tab: its own (empty) profile, storage and cache.
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    ui = Ui(page, base_url, shots_dir)
    page.on("pageerror", lambda exc: ui.errors.append(str(exc)))
    return ui


@pytest.fixture
def ui(browser: Any, serve_app: ServeApp, shots_dir: Path) -> Iterator[Ui]:
    page_ok = httpx.get(serve_app.base_url + "/", timeout=30)
    if page_ok.status_code != 200:
        pytest.fail("the service does not serve the UI at /: call serve.ui.mount_ui(app)")
    tab = new_ui(browser, serve_app.base_url, shots_dir)
    try:
        yield tab
    finally:
        tab.page.context.close()


def result_of(app: ServeApp, job_id: str) -> dict[str, Any]:
    with app.client() as http:
        job = wait_job(http, job_id, timeout=JOB_TIMEOUT_S)
        assert job["status"] == "done", job
        result: dict[str, Any] = http.get(f"/v1/jobs/{job_id}/result").json()
        return result


@pytest.mark.browser
@pytest.mark.ray
def test_image_analysis(ui: Ui, browser: Any, serve_app: ServeApp, shared_data: Path) -> None:
    page = ui.page
    ui.open()
    ui.snap("01-key-prompt")
    # A wrong key is refused and asked for again, with the service's reason.
    ui.enter_key("not-a-key")
    ui.wait_until(
        "() => document.querySelector('#key-reason').textContent.includes('not accepted')"
    )
    assert page.is_visible("#key-dialog[open]")
    page.fill("#key-input", serve_app.key)
    page.click("#key-submit")
    page.wait_for_selector("#recent-title")
    ui.snap("02-submit")

    job_id = ui.submit_file(shared_data / IMAGE)
    ui.wait_result("image")
    ui.wait_loaded("#analysed-image")
    result = result_of(serve_app, job_id)
    faces = all_faces(result)
    assert faces, "the test image has faces"

    boxes = page.locator(".face-box")
    assert boxes.count() == len(faces)
    img = page.locator("#analysed-image").bounding_box()
    width, height = result["source"]["width"], result["source"]["height"]
    for i, face in enumerate(faces):
        box = boxes.nth(i)
        assert float(box.get_attribute("data-score")) == face["score"]
        assert box.locator(".face-score").inner_text() == pct(face["score"])
        colour = "rgb({}, {}, {})".format(*score_colour(face["score"]))
        assert box.evaluate("el => getComputedStyle(el).borderTopColor") == colour
        # Drawn where the face is: the box in image pixels, scaled to the displayed image.
        drawn = box.bounding_box()
        x1, y1, x2, y2 = face["box"]
        sx, sy = img["width"] / width, img["height"] / height
        assert drawn["x"] == pytest.approx(img["x"] + max(0.0, x1) * sx, abs=2)
        assert drawn["y"] == pytest.approx(img["y"] + max(0.0, y1) * sy, abs=2)
        assert drawn["width"] == pytest.approx((min(width, x2) - max(0.0, x1)) * sx, abs=2)
        assert drawn["height"] == pytest.approx((min(height, y2) - max(0.0, y1)) * sy, abs=2)
    overall = page.locator("#overall-score")
    assert float(overall.get_attribute("data-score")) == result["score"]
    assert overall.inner_text() == pct(result["score"])
    bands = result["bands"]
    assert f"{bands['manipulated_from'] * 100:g}% and above" in page.inner_text("#overall")
    assert page.locator("#untrained-warning").count() == 0  # the test models are "trained"
    ui.snap("03-image")

    # Hover-to-zoom: a lens magnifies the region under the pointer.
    first = boxes.first.bounding_box()
    page.mouse.move(first["x"] + first["width"] / 2, first["y"] + first["height"] / 2)
    page.wait_for_selector(".image-frame .zoom-lens:not([hidden])")
    ui.snap("04-image-zoom", full_page=False)

    # The result URL is shareable: a new tab (with the key) shows the same analysis.
    other = new_ui(browser, serve_app.base_url, ui.shots_dir)
    try:
        other.open(f"#/jobs/{job_id}", key=serve_app.key)
        other.wait_result("image")
        assert other.page.locator(".face-box").count() == len(faces)
        other.assert_no_script_errors()
    finally:
        other.page.context.close()
    ui.assert_no_script_errors()


@pytest.mark.browser
@pytest.mark.ray
def test_video_analysis(ui: Ui, serve_app: ServeApp, shared_data: Path) -> None:
    page = ui.page
    ui.open(key=serve_app.key)
    # ``force``: analyse again even if another test cached it, so that progress is visible.
    job_id = ui.submit_file(shared_data / VIDEO, force=True)
    page.wait_for_selector("#stages .stage.current")
    ui.snap("05-progress")
    ui.wait_result("video")
    result = result_of(serve_app, job_id)
    shots = result["shots"]
    assert len(shots) >= 2, "the test video has several shots"
    scored = [i for i, s in enumerate(shots) if s["score"] is not None]
    top = max(scored, key=lambda i: shots[i]["score"])
    assert shots[top]["index"] == result["top_shot"]

    # The highest-scoring shot is selected first, in the selector, the timeline and the detail.
    assert page.input_value("#shot-select") == str(top)
    assert page.get_attribute(".shot-seg.selected", "data-shot") == str(top)
    assert page.get_attribute("#shot-detail", "data-shot") == str(top)
    assert page.locator(".shot-seg").count() == len(shots)
    tracks = page.locator("#shot-detail .track")
    assert tracks.count() == len(shots[top]["clusters"])
    for k, cluster in enumerate(shots[top]["clusters"]):
        chip = tracks.nth(k).locator(".score-chip")
        assert float(chip.get_attribute("data-score")) == cluster["score"]
        assert chip.inner_text() == pct(cluster["score"])
    # Each track window opens on the "Shot" view (the collage).
    first_track = tracks.first
    assert first_track.locator('[role="tab"][aria-selected="true"]').inner_text() == "Shot"
    ui.wait_loaded("#shot-detail .track .track-shot")
    ui.wait_until("() => document.querySelector('#player').readyState >= 1")
    ui.snap("06-video")

    # "Keyframe" swaps the picture; hover-to-zoom works on it.
    collage_src = first_track.locator("img").get_attribute("src")
    first_track.locator('[role="tab"][data-view="keyframe"]').click()
    assert first_track.locator('[role="tabpanel"]').get_attribute("data-view") == "keyframe"
    ui.wait_loaded("#shot-detail .track .track-keyframe")
    assert first_track.locator("img").get_attribute("src") != collage_src
    frame = first_track.locator(".media-frame").bounding_box()
    page.mouse.move(frame["x"] + frame["width"] / 2, frame["y"] + frame["height"] / 2)
    page.wait_for_selector("#shot-detail .zoom-lens:not([hidden])")
    ui.snap("07-video-keyframe")
    # Arrow keys move between the views too (keyboard users).
    first_track.locator('[role="tab"][data-view="keyframe"]').press("ArrowLeft")
    assert first_track.locator('[role="tabpanel"]').get_attribute("data-view") == "shot"

    # Another shot, from the keyboard on the timeline: the detail follows, the player seeks.
    other = next(i for i in range(len(shots)) if i != top and shots[i]["start_s"] > 0)
    segment = page.locator(f'.shot-seg[data-shot="{other}"]')
    segment.focus()
    page.keyboard.press("Enter")
    page.wait_for_selector(f'#shot-detail[data-shot="{other}"]')
    assert page.input_value("#shot-select") == str(other)
    assert page.locator("#shot-detail .track").count() == len(shots[other]["clusters"])
    assert page.inner_text("#shot-title").startswith(f"Shot {shots[other]['index'] + 1} of")
    ui.wait_until(
        "(t) => Math.abs(document.querySelector('#player').currentTime - t) < 0.05",
        shots[other]["start_s"],
    )
    ui.snap("08-video-other-shot")
    # And with the selector.
    page.select_option("#shot-select", str(top))
    page.wait_for_selector(f'#shot-detail[data-shot="{top}"]')

    # The overall score, at the bottom, is the JSON's, explained as the maximum over shots.
    overall = page.locator("#overall-score")
    assert float(overall.get_attribute("data-score")) == result["score"]
    assert result["score"] == shots[top]["score"]
    assert overall.inner_text() == pct(result["score"])
    assert "maximum over shots" in page.inner_text("#overall-explanation")
    assert page.evaluate(
        "document.querySelector('#overall').getBoundingClientRect().top >"
        " document.querySelector('#shot-detail').getBoundingClientRect().top"
    )
    ui.assert_no_script_errors()


def two_shot_video(shared_data: Path, out: Path) -> Path:
    """Two real clips, one after the other (a hard cut at 2 s), as VP8 WebM (plays in browsers).

    With the test models the second clip's face scores higher than the first's, so the shot
    selected first must not simply be the first shot.
    """
    fps, size = 25.0, (512, 512)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"VP80"), fps, size)
    assert writer.isOpened(), "OpenCV cannot write VP8 WebM here"
    try:
        for name in ("liveportrait_d0.mp4", "sadtalker_WDA_AlexandriaOcasioCortez_000.mp4"):
            times = [k / fps for k in range(50)]
            for _, rgb in read_frames_at(shared_data / "videos" / name, times):
                writer.write(cv2.cvtColor(fit_frame(rgb, size), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return out


@pytest.mark.browser
@pytest.mark.ray
def test_top_shot_first_when_it_is_not_the_first_shot(
    ui: Ui, serve_app: ServeApp, shared_data: Path, tmp_path: Path
) -> None:
    video = two_shot_video(shared_data, tmp_path / "two_shots.webm")
    ui.open(key=serve_app.key)
    job_id = ui.submit_file(video)
    ui.wait_result("video")
    result = result_of(serve_app, job_id)
    top = result["top_shot"]
    assert top is not None and top != 0, "the test video must have its top shot later"
    position = next(i for i, s in enumerate(result["shots"]) if s["index"] == top)
    assert ui.page.input_value("#shot-select") == str(position)
    assert ui.page.get_attribute(".shot-seg.selected", "data-shot") == str(position)
    ui.assert_no_script_errors()


@pytest.mark.browser
@pytest.mark.ray
def test_errors_show_the_problem(
    ui: Ui, serve_app: ServeApp, shared_data: Path, tmp_path: Path
) -> None:
    """Refused submissions and failed jobs show the problem's title and detail."""
    page = ui.page
    ui.open(key=serve_app.key)
    not_media = tmp_path / "notes.txt"
    not_media.write_text("not an image or a video\n")
    with serve_app.client() as http:
        bad_url = http.post("/v1/jobs", json={"url": "not a url"}).json()
        with not_media.open("rb") as f:
            bad_file = http.post("/v1/jobs", files={"file": (not_media.name, f)}).json()

    page.fill("#url", "not a url")
    page.click("#submit-url")
    page.wait_for_selector("#submit-error .problem")
    assert page.inner_text("#submit-error .problem-title") == bad_url["title"]
    assert page.inner_text("#submit-error .problem-detail") == bad_url["detail"]
    assert "#/jobs/" not in page.url
    ui.snap("09-invalid-url")

    page.set_input_files("#file", str(not_media))
    page.wait_for_selector(f'#submit-error .problem[data-problem-type="{bad_file["type"]}"]')
    assert page.inner_text("#submit-error .problem-detail") == bad_file["detail"]

    # A file that passes the upload checks but cannot be decoded: the job fails.
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes((shared_data / VIDEO).read_bytes()[:30_000])
    job_id = ui.submit_file(truncated, force=True)
    page.wait_for_selector("#job-body .problem", timeout=JOB_TIMEOUT_S * 1000)
    with serve_app.client() as http:
        job = wait_job(http, job_id, timeout=JOB_TIMEOUT_S)
    assert job["status"] == "failed"
    assert page.inner_text("#job-body .problem-title") == job["error"]["title"]
    assert page.inner_text("#job-body .problem-detail") == job["error"]["detail"]
    assert page.inner_text("#view-title") == "Analysis failed"
    ui.snap("10-failed-job")
    ui.assert_no_script_errors()


@pytest.mark.browser
@pytest.mark.ray
def test_model_card_and_about(ui: Ui, serve_app: ServeApp) -> None:
    with serve_app.client() as http:
        card = http.get("/v1/model-card").json()
        version = http.get("/v1/version").json()
    ui.open("#/model-card", key=serve_app.key)
    ui.page.wait_for_selector(".models-table")
    rows = ui.page.locator(".models-table tbody tr")
    assert rows.count() == len(card["models"])
    for i, model in enumerate(card["models"]):
        text = rows.nth(i).inner_text()
        assert model["name"] in text
        assert ("Trained" if model["weights"] == "trained" else "Untrained") in text
    if card.get("status") == "placeholder":
        assert "placeholder" in ui.page.inner_text("#model-card-placeholder").lower()
    ui.snap("11-model-card")
    ui.page.click('nav a[href="#/about"]')
    ui.page.wait_for_selector("#service-version")
    assert ui.page.inner_text("#service-version") == version["service_version"]
    assert ui.page.get_attribute('nav a[href="#/about"]', "aria-current") == "page"
    ui.snap("12-about")
    ui.assert_no_script_errors()


@pytest.mark.browser
def test_untrained_weights_are_announced(
    browser: Any, tmp_path: Path, shots_dir: Path, shared_data: Path
) -> None:
    """Random-init models: every result view says so (here without keys: artefacts load by
    URL, not through the key-authenticated fetch)."""
    model_dir = tmp_path / "models"
    make_model_dir(model_dir, with_weights=False)
    settings = analysis_settings(model_dir)
    models = LocalModels.load(
        settings.inference, settings.faces, settings.segmentation, settings.embedder_weights
    )
    config = ServiceConfig(home=tmp_path / "home", analysis=analysis_settings(model_dir))
    with local_service(config, models) as service:
        if httpx.get(service.base_url + "/").status_code != 200:
            pytest.fail("serve.api.create_api does not mount the UI: call mount_ui(app) there")
        ui = new_ui(browser, service.base_url, shots_dir)
        try:
            ui.open()
            job_id = ui.submit_file(shared_data / "faces/fr_obama.jpg")
            ui.wait_result("image")
            ui.wait_loaded("#analysed-image")
            warning = ui.page.inner_text("#untrained-warning")
            assert "untrained" in warning.lower()
            src = ui.page.eval_on_selector("#analysed-image", "img => img.src")
            assert src.startswith(f"{service.base_url}/v1/jobs/{job_id}/artefacts/")
            ui.snap("13-untrained-warning")
            ui.open("#/about")
            ui.page.wait_for_selector("#about-facts #untrained-warning")
            ui.snap("14-about-untrained")
            ui.assert_no_script_errors()
        finally:
            ui.page.context.close()
        with service.client() as http:
            assert wait_job(http, job_id)["status"] == "done"


@pytest.mark.browser
def test_api_docs_work_with_the_network_blocked(
    browser: Any, tmp_path: Path, model_dir: Path, local_models: LocalModels
) -> None:
    """``/docs`` loads Swagger UI's script and style from the service itself: with every
    request to another origin refused, the page lists every operation of ``/openapi.json``."""
    config = ServiceConfig(home=tmp_path / "home", analysis=analysis_settings(model_dir))
    with local_service(config, local_models) as service:
        context = browser.new_context()
        blocked: list[str] = []

        def only_the_service(route: Any) -> None:
            if route.request.url.startswith(service.base_url):
                route.continue_()
            else:
                blocked.append(route.request.url)
                route.abort()

        try:
            page = context.new_page()
            page.route("**/*", only_the_service)
            page.goto(service.base_url + "/docs")
            page.wait_for_selector(".opblock", timeout=30_000)
            spec = httpx.get(service.base_url + "/openapi.json").json()
            operations = sum(len(methods) for methods in spec["paths"].values())
            assert page.locator(".opblock").count() == operations
            assert blocked == []
        finally:
            context.close()
