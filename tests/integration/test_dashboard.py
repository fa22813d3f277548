"""The operator dashboard (``/ui/``) in a real browser against the real stack.

Debian's Chromium, headless, driven by Playwright for Python, signs in with a token, watches a
scene arrive on the live list and turn done, opens it and sees its boxes, searches for it (a
search that finds it and one that does not), asks a question and sees the answer, and sees the
alert a rule fires on it arrive live, with its webhook delivery. Nothing is stubbed: the page
talks to the stack's API process, which reads the catalog the pipeline writes.

The scene is the shipped world scene (a lake with buildings) written as a GeoTIFF, so it has a
place on the map and the tiny model finds a building in it, as it does in the plain PNG. The
screenshots are saved to ``$SKYEYE_SCREENSHOTS`` (else a folder under pytest's base temp) and
the folder is printed, with the time from the object landing to the page showing it done.

A machine without Chromium fails here, naming the Debian package to install: never a skip.
"""

import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from skyeye import samples
from skyeye.cli.ingest import ingest

from .conftest import Pipeline
from .test_alert_delivery import Receiver

WAIT_S = 300
# UTM 33N near 14.1 E 61.2 N, in Sweden: no other test's scene lies there
ORIGIN = (450_000.0, 6_790_000.0)
AROUND = (13.5, 60.8, 14.5, 61.6)
ELSEWHERE = "-10,-10,-9,-9"
# not the pipeline's standing question: its answer is the ask's alone
QUESTION = "Is there a ship on the lake?"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# milliseconds a browser step may take: the pipeline's work happens between steps
STEP_MS = WAIT_S * 1000
# what Chromium logs when the API refuses a token, as the test's first sign-in means it to
REFUSED = "Failed to load resource: the server responded with a status of 401"
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/lib/chromium/chromium")
MISSING_CHROMIUM = (
    "the dashboard's browser test needs Chromium: install Debian's package `chromium` "
    "(apt-get install -y chromium), or point SKYEYE_CHROMIUM at a Chromium executable"
)


def _chromium() -> str:
    """The Chromium executable to drive; fails (never skips) when the machine has none."""
    named = os.environ.get("SKYEYE_CHROMIUM")
    for candidate in (named, *CHROMIUM_PATHS, shutil.which("chromium")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(MISSING_CHROMIUM, pytrace=False)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    named = os.environ.get("SKYEYE_SCREENSHOTS")
    folder = Path(named) if named else tmp_path_factory.mktemp("dashboard-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def admin_token(pipeline: Pipeline) -> Iterator[str]:
    with pipeline.token("admin", name="dashboard") as token:
        yield token


@pytest.fixture(scope="module")
def api(pipeline: Pipeline, admin_token: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=pipeline.api_url(),
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=httpx.Timeout(120.0),
    ) as client:
        yield client


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """A webhook receiver for the rule (its secret set once the rule is made)."""
    made = Receiver(secret="")
    yield made
    made.close()


@pytest.fixture(scope="module")
def rule(api: httpx.Client, receiver: Receiver) -> Iterator[dict[str, Any]]:
    """A rule firing on a building around the scene, made through the API as an operator would."""
    name = f"dash-buildings-{uuid.uuid4().hex[:6]}"
    made = api.post(
        "/rules",
        json={
            "name": name,
            "bbox": list(AROUND),
            "condition": {"kind": "detection", "phrase": "building", "min_count": 1},
            "webhooks": [receiver.url],
        },
    )
    assert made.status_code == 201, made.text
    body = made.json()
    receiver.secret = body["webhooks"][0]["secret"]
    yield body
    api.delete(f"/rules/{name}")


def _world_geotiff(path: Path) -> Path:
    """The shipped world scene as a 3-band GeoTIFF in UTM 33N, 10 m pixels, at ``ORIGIN``."""
    pixels = np.asarray(Image.open(samples.world_scene()).convert("RGB"))
    height, width = pixels.shape[:2]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(*ORIGIN, 10.0, 10.0),
    ) as out:
        out.write(pixels.transpose(2, 0, 1))
    return path


def test_the_root_sends_browsers_to_the_dashboard_and_keeps_json_for_stac_clients(
    pipeline: Pipeline,
) -> None:
    base = pipeline.api_url()
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    to_page = httpx.get(f"{base}/", headers={"Accept": browser}, follow_redirects=False)
    assert to_page.status_code == 303
    assert httpx.URL(f"{base}/").join(to_page.headers["location"]) == httpx.URL(f"{base}/ui/")
    for accept in (None, "*/*", "application/json", "text/html;q=0.5,application/json"):
        headers = {} if accept is None else {"Accept": accept}
        landing = httpx.get(f"{base}/", headers=headers, follow_redirects=False)
        assert landing.status_code == 200, accept
        assert landing.json()["type"] == "Catalog", accept
    page = httpx.get(f"{base}/ui/?view=list&q=ships", headers={"Accept": browser})
    assert page.status_code == 200, page.text  # the page's own query is not the API's
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    script = httpx.get(f"{base}/ui/static/js/app.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert "/ui/" not in {p.rstrip("/") + "/" for p in httpx.get(f"{base}/api").json()["paths"]}


def _console(message: Any, problems: list[str]) -> None:
    """Note the page's console errors, but the one a refused sign-in logs (the test's own)."""
    if message.type == "error" and not message.text.startswith(REFUSED):
        problems.append(f"console: {message.text}")


def _loaded(page: Any, image: Any) -> None:
    """Wait until an <img> has decoded a picture (an <img> without a source is "complete")."""
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
    )


def _shot(page: Any, folder: Path, name: str, shots: list[str], whole: bool = False) -> None:
    """A screenshot of the viewport from the top (``whole``: the whole page)."""
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(folder / name), full_page=whole)
    shots.append(name)


def test_an_operator_watches_searches_asks_and_is_alerted_in_a_browser(
    pipeline: Pipeline,
    api: httpx.Client,
    admin_token: str,
    rule: dict[str, Any],
    receiver: Receiver,
    screenshots: Path,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    executable = _chromium()
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail(
            "the browser test needs Playwright for Python: pip install -e '.[dev]'", pytrace=False
        )
    scene = _world_geotiff(tmp_path_factory.mktemp("dashboard") / "lake-scene.tif")
    base = pipeline.api_url()
    shots: list[str] = []
    problems: list[str] = []

    with sync_playwright() as playwright:
        # the machine has no way out: Chromium must not try to reach Google's services
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--disable-quic", "--disable-gpu"]
        )
        context = browser.new_context(viewport=DESKTOP)
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on("console", lambda m: _console(m, problems))
        try:
            # a browser opening the API's root lands on the dashboard's sign-in
            page.goto(f"{base}/")
            assert page.url == f"{base}/ui/"
            expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
            page.get_by_label("API token").fill("not-a-token")
            page.get_by_role("button", name="Sign in").click()
            expect(page.locator("#signin-error")).to_contain_text("not a SkyEye API token")
            _shot(page, screenshots, "01-sign-in.png", shots)
            page.get_by_label("API token").fill(admin_token)
            page.get_by_role("button", name="Sign in").click()
            expect(page.locator("#live")).to_have_attribute("data-state", "live")
            assert admin_token not in page.url
            assert page.evaluate("sessionStorage.getItem('skyeye.token')") == admin_token

            # the object lands; its card appears without a reload and turns done
            landed = time.monotonic()
            [done] = ingest(pipeline.settings, [scene], prefix="it/dashboard")
            announced = time.monotonic()
            card = page.locator(f'article.card[data-asset-id="{done.asset_id}"]')
            expect(card).to_be_visible(timeout=STEP_MS)
            expect(card.locator("[data-status]")).to_have_attribute(
                "data-status", "done", timeout=STEP_MS
            )
            shown_done = time.monotonic()
            _loaded(page, card.locator("img"))
            expect(page.locator("#cards article.card").first).to_have_attribute(
                "data-asset-id", str(done.asset_id)
            )

            detail = api.get(f"/assets/{done.asset_id}").json()
            kept = [f for f in detail["detections"]["features"] if not f["properties"]["duplicate"]]
            assert detail["status"] == "done" and detail["bbox"] is not None
            assert "building" in {f["properties"]["label"] for f in kept}, detail["results"]
            caption = next(r for r in detail["results"] if r["task_kind"] == "caption")
            expect(card.locator(".caption")).to_have_text(caption["answer"]["text"])

            # the rule fires as the scene finishes: its alert arrives live
            toast = page.locator(".toast", has_text=rule["name"])
            expect(toast).to_be_visible(timeout=STEP_MS)
            expect(page.locator("#alert-badge")).to_be_visible()
            _shot(page, screenshots, "02-list-live-done-with-alert.png", shots)
            page.set_viewport_size(PHONE)
            _shot(page, screenshots, "03-list-phone.png", shots)
            page.set_viewport_size(DESKTOP)

            # the asset: its preview with every kept box and its phrase
            card.get_by_role("link", name="lake-scene.tif").click()
            expect(page.get_by_role("heading", name="lake-scene.tif")).to_be_visible()
            assert f"id={done.asset_id}" in page.url
            _loaded(page, page.locator("#preview"))
            boxes = page.locator("svg.boxes g.box")
            expect(boxes).to_have_count(len(detail["detections"]["features"]))
            visible = page.locator("svg.boxes g.box:not(.duplicate)")
            expect(visible).to_have_count(len(kept))
            expect(visible.filter(has_text="building").first).to_be_visible()
            expect(page.locator("#box-table")).to_contain_text("building")
            expect(page.locator("#asset-caption")).to_have_text(caption["answer"]["text"])
            page.get_by_label(re.compile("Show duplicates")).check()
            expect(page.locator("svg.boxes g.box:visible")).to_have_count(len(boxes.all()))
            _shot(page, screenshots, "04-asset-boxes.png", shots, whole=True)
            page.set_viewport_size(PHONE)
            _shot(page, screenshots, "05-asset-phone.png", shots, whole=True)
            page.set_viewport_size(DESKTOP)

            # a question through the ask box, and its answer
            page.get_by_label("Task").select_option("vqa")
            page.get_by_label("Question or phrase").fill(QUESTION)
            with page.expect_response(
                lambda r: r.url.endswith(f"/assets/{done.asset_id}/ask"), timeout=STEP_MS
            ) as asked:
                page.get_by_role("button", name="Ask").click()
            answer = asked.value.json()
            assert asked.value.status == 200, answer
            shown = page.locator("#ask-answers li.answer")
            expect(shown).to_have_count(len(answer["answers"]))
            first = answer["answers"][0]
            said = (first["answer"] or {}).get("text") or first["raw_text"]
            expect(shown.first).to_contain_text(said)
            # the stored answer joins the asset's answers
            expect(page.locator("#answers tr", has_text=QUESTION)).not_to_have_count(0)
            _shot(page, screenshots, "06-asset-asked.png", shots, whole=True)

            # a search that finds it: a word of its caption, in its area, its class
            word = max(re.findall(r"[a-z]{4,}", caption["answer"]["text"].lower()), key=len)
            area = ",".join(str(v) for v in AROUND)
            page.get_by_label("Search", exact=True).fill(word)
            page.get_by_label("Area W,S,E,N").fill(area)
            page.get_by_label("Class").fill("building")
            page.get_by_role("button", name="Search", exact=True).click()
            found = page.locator(f'article.card[data-asset-id="{done.asset_id}"]')
            expect(found).to_be_visible()
            expect(found.locator(".matches")).to_contain_text(word)
            shared = page.url
            assert f"q={word}" in shared and "label=building" in shared and "bbox=" in shared
            _shot(page, screenshots, "07-search-finds-it.png", shots)
            # the link is shareable: opened afresh (same session), it runs the same search
            page.goto(shared)
            expect(found).to_be_visible()
            expect(page.get_by_label("Search", exact=True)).to_have_value(word)

            # the map of that search: the footprint and the box; a click opens the asset
            page.get_by_role("link", name="Map", exact=True).click()
            footprint = page.locator(f"path.footprint-{done.asset_id}")
            expect(footprint).to_have_count(1)
            expect(page.locator("path.detection")).not_to_have_count(0)
            expect(page.locator("#summary")).to_contain_text("1 on the map")
            _shot(page, screenshots, "08-map.png", shots)
            # an area drawn around the footprint becomes the search's bbox, in the URL
            around = footprint.bounding_box()
            assert around is not None
            page.get_by_role("button", name="Draw an area").click()
            page.mouse.move(around["x"] - 30, around["y"] - 30)
            page.mouse.down()
            page.mouse.move(
                around["x"] + around["width"] + 30, around["y"] + around["height"] + 30, steps=8
            )
            page.mouse.up()
            expect(page.get_by_label("Area W,S,E,N")).not_to_have_value(area)
            drawn = [float(v) for v in page.get_by_label("Area W,S,E,N").input_value().split(",")]
            assert drawn[0] < detail["bbox"][0] and drawn[1] < detail["bbox"][1]
            assert drawn[2] > detail["bbox"][2] and drawn[3] > detail["bbox"][3]
            expect(page.locator("#summary")).to_contain_text("1 on the map")
            assert "bbox=" in page.url and area.replace(",", "%2C") not in page.url
            _shot(page, screenshots, "09-map-area-drawn.png", shots)
            footprint.click(position={"x": 5, "y": 5}, force=True)
            expect(page.get_by_role("heading", name="lake-scene.tif")).to_be_visible()

            # a search that does not find it: the same words elsewhere
            page.get_by_role("link", name="Assets", exact=True).click()
            page.get_by_label("Area W,S,E,N").fill(ELSEWHERE)
            page.get_by_role("button", name="Search", exact=True).click()
            expect(page.locator("#empty")).to_have_text("No assets match this search.")
            expect(found).to_have_count(0)
            _shot(page, screenshots, "10-search-finds-nothing.png", shots)

            # the alerts view: the rule, its alert with the evidence, the webhook delivered
            page.get_by_role("link", name=re.compile("^Alerts")).click()
            alert = page.locator(f'li.alert[data-asset-id="{done.asset_id}"]')
            expect(alert).to_contain_text(rule["name"])
            expect(alert.locator(".evidence")).to_contain_text("building")
            delivered = page.locator(
                f'li.rule[data-rule="{rule["name"]}"] tr[data-delivery-status="delivered"]'
            )
            expect(delivered).not_to_have_count(0, timeout=STEP_MS)
            expect(alert).to_contain_text("1 of 1 delivered")
            _shot(page, screenshots, "11-alerts.png", shots)
            page.set_viewport_size(PHONE)
            _shot(page, screenshots, "12-alerts-phone.png", shots)
        finally:
            browser.close()

    assert receiver.ids(), "the rule's webhook received nothing"
    assert problems == [], problems
    with capsys.disabled():
        print(f"\n[dashboard] screenshots in {screenshots}: {', '.join(shots)}")
        print(
            f"[dashboard] object landing to shown done on the page: "
            f"{shown_done - landed:.1f} s ({shown_done - announced:.1f} s after the upload and "
            "its event were sent)"
        )
