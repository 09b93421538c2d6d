"""The playground page in headless Debian Chromium, against the live stack.

Both pages run under their Content-Security-Policy: every test records what the browser
reports it blocked, and fails on anything.
"""

from __future__ import annotations

import base64
import re
import shutil
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import API_KEY, ROOT, data_uri, png_bytes, serve
from tests.integration.test_generation import poll, submit
from tests.integration.test_job_control import watch

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = ROOT / "test-artifacts"
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
]


# Runs in every document before the page's own scripts (CDP's injection is exempt from CSP).
RECORD_CSP_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => window.cspViolations.push(
  `${e.effectiveDirective} blocked ${e.blockedURI || "inline"} (${e.sourceFile}:${e.lineNumber})`));
"""


def csp_violations(driver: webdriver.Chrome) -> list[str]:
    """What the current page's policy blocked so far."""
    return list(driver.execute_script("return window.cspViolations || []"))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """Debian's Chromium through Debian's chromedriver; nothing is downloaded. A test fails
    at teardown if the page's policy blocked anything."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("install Debian's chromium and chromium-driver (the Makefile does)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    # An explicit driver path: selenium-manager never runs.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_CSP_VIOLATIONS}
    )
    try:
        yield driver
        assert csp_violations(driver) == []
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def wait(driver: webdriver.Chrome, timeout_s: float = 20) -> WebDriverWait[webdriver.Chrome]:
    return WebDriverWait(driver, timeout_s, poll_frequency=0.1)


def image_width(driver: webdriver.Chrome) -> int:
    """The natural width of the first result image once it has loaded, else 0."""
    script = "const i = document.querySelector('#results img.result');"
    width = driver.execute_script(script + "return i && i.complete ? i.naturalWidth : 0;")
    return int(width or 0)


def shown_error(driver: webdriver.Chrome) -> str | None:
    """The text of the error box, if it is shown."""
    box = driver.find_element(By.ID, "error")
    return box.text if box.is_displayed() else None


def open_playground(driver: webdriver.Chrome, api_url: str) -> None:
    """Load the page, pick tiny-sd once the models are listed, give the key, ask for one image."""
    driver.get(f"{api_url}/")
    wait(driver).until(lambda d: len(Select(d.find_element(By.ID, "app_id")).options) > 0)
    Select(driver.find_element(By.ID, "app_id")).select_by_value("tiny-sd")
    driver.find_element(By.ID, "api-key").send_keys(API_KEY)
    set_field(driver, "batch", "1")


def set_field(driver: webdriver.Chrome, field: str, value: str) -> None:
    element = driver.find_element(By.ID, field)
    element.clear()
    element.send_keys(value)


def submit_and_wait(driver: webdriver.Chrome) -> None:
    """Click Generate, then wait for the first result image or the error box."""
    driver.find_element(By.ID, "submit").click()
    wait(driver, 90).until(lambda d: image_width(d) or shown_error(d))
    assert shown_error(driver) is None, shown_error(driver)
    assert driver.find_element(By.ID, "status").text.startswith("Done")


def test_playground_uploads_a_file_and_shows_the_images(
    browser: webdriver.Chrome, api_url: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(256, 256))
    open_playground(browser, api_url)
    browser.find_element(By.ID, "image-file").send_keys(str(photo))
    submit_and_wait(browser)
    assert image_width(browser) == 256
    links = browser.find_elements(By.CSS_SELECTOR, "#results a.download")
    assert len(links) == 1
    bucket_url = f"{stack_env['EASEL_S3_ENDPOINT_URL']}/{stack_env['EASEL_S3_BUCKET']}/"
    assert (links[0].get_attribute("href") or "").startswith(bucket_url)
    previews = browser.find_elements(By.CSS_SELECTOR, "#results a.preview")
    assert (previews[0].get_attribute("href") or "").startswith(bucket_url)
    ARTIFACTS.mkdir(exist_ok=True)
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(ARTIFACTS / "playground.png"))

    browser.refresh()
    key = wait(browser).until(lambda d: d.find_element(By.ID, "api-key").get_attribute("value"))
    assert key == API_KEY


def test_playground_shows_the_errors_of_a_refused_request(
    browser: webdriver.Chrome, api_url: str
) -> None:
    browser.get(f"{api_url}/")
    wait(browser).until(lambda d: len(Select(d.find_element(By.ID, "app_id")).options) > 0)
    browser.find_element(By.ID, "api-key").send_keys(API_KEY)
    browser.find_element(By.ID, "image-url").send_keys("ftp://example.invalid/photo.png")
    browser.find_element(By.ID, "submit").click()
    error = wait(browser).until(shown_error)
    assert "image" in error
    assert "HTTP 400" in browser.find_element(By.ID, "status").text


def test_docs_render_every_operation_from_local_files(
    browser: webdriver.Chrome, api_url: str
) -> None:
    browser.get(f"{api_url}/docs")
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))
    operations = browser.find_elements(By.CSS_SELECTOR, ".opblock")
    spec = httpx.get(f"{api_url}/openapi.json", timeout=10).json()
    documented = sum(len(item) for item in spec["paths"].values())
    assert len(operations) == documented  # every operation of the document is on the page
    assert "Unable to render" not in browser.find_element(By.TAG_NAME, "body").text


def test_the_policy_blocks_an_injected_inline_script(
    browser: webdriver.Chrome, api_url: str
) -> None:
    for page in ("/", "/docs"):
        browser.get(f"{api_url}{page}")
        injected = "const s = document.createElement('script');"
        injected += "s.textContent = 'window.ran = true'; document.body.append(s);"
        browser.execute_script(injected)
        wait(browser).until(csp_violations)
        assert browser.execute_script("return window.ran") is None
        assert csp_violations(browser)[0].startswith("script-src-elem blocked inline")
        browser.execute_script("window.cspViolations.length = 0")  # this one was expected


def test_playground_submits_a_pasted_image_url(browser: webdriver.Chrome, api_url: str) -> None:
    photo = png_bytes(320, 320)
    requested: list[str] = []

    class Photo(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requested.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(photo)))
            self.end_headers()
            self.wfile.write(photo)

        def log_message(self, *_: object) -> None:
            pass

    # The test stack allows image URLs on 127.0.0.1 (EASEL_IMAGE_URL_ALLOWLIST).
    with serve(Photo) as origin:
        open_playground(browser, api_url)
        browser.find_element(By.ID, "image-url").send_keys(f"{origin}/photo.png")
        submit_and_wait(browser)
    assert "/photo.png" in requested
    assert image_width(browser) == 320  # the served photo's size, so it was the input


# A drop as the browser delivers one: a File in a DataTransfer, on dragover then drop.
# dispatchEvent answers false when the page called preventDefault, which is what keeps
# the browser from opening the dropped file itself.
DROP_FILE = """
const [b64, name] = arguments;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const data = new DataTransfer();
data.items.add(new File([bytes], name, { type: "image/png" }));
const zone = document.getElementById("drop-zone");
const fire = (type) => zone.dispatchEvent(
  new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: data }));
const overTaken = !fire("dragover");
const highlighted = zone.classList.contains("dragging");
const dropTaken = !fire("drop");
return [overTaken, highlighted, dropTaken, zone.classList.contains("dragging")];
"""


def test_playground_takes_a_dropped_file(browser: webdriver.Chrome, api_url: str) -> None:
    open_playground(browser, api_url)
    photo = base64.b64encode(png_bytes(192, 192)).decode()
    over, highlighted, dropped, still = browser.execute_script(DROP_FILE, photo, "drop.png")
    assert (over, highlighted, dropped, still) == (True, True, True, False)
    preview = "const p = document.getElementById('image-preview');"
    preview += "return !p.hidden && p.complete ? p.naturalWidth : 0;"
    assert wait(browser).until(lambda d: d.execute_script(preview)) == 192
    assert browser.find_element(By.ID, "clear-file").is_displayed()
    assert browser.find_element(By.ID, "image-url").get_attribute("value") == ""
    submit_and_wait(browser)
    assert image_width(browser) == 192  # the dropped file's size, so it was the input


DROP_DATA = """
const [kind, value] = arguments;
const data = new DataTransfer();
data.setData(kind, value);
document.getElementById("drop-zone").dispatchEvent(
  new DragEvent("drop", { bubbles: true, cancelable: true, dataTransfer: data }));
"""


def test_a_dropped_link_becomes_the_url_and_dropped_text_changes_nothing(
    browser: webdriver.Chrome, api_url: str
) -> None:
    open_playground(browser, api_url)
    photo = base64.b64encode(png_bytes(192, 192)).decode()
    browser.execute_script(DROP_FILE, photo, "drop.png")
    browser.execute_script(DROP_DATA, "text/plain", "some selected words")
    assert browser.find_element(By.ID, "clear-file").is_displayed()  # the file is kept
    assert browser.find_element(By.ID, "image-url").get_attribute("value") == ""
    link = "https://images.example/cat.jpg"
    browser.execute_script(DROP_DATA, "text/uri-list", f"# a comment line\n{link}")
    assert browser.find_element(By.ID, "image-url").get_attribute("value") == link
    assert not browser.find_element(By.ID, "clear-file").is_displayed()  # the link is sent


# Every change to the status line or the progress bar, as the page showed it: polling
# from here could miss a state the page showed between two polls.
RECORD_JOB_VIEW = """
window.jobView = [];
const snapshot = () => window.jobView.push({
  status: document.getElementById("status").textContent,
  hidden: document.getElementById("progress").hidden,
  width: document.getElementById("progress-bar").style.width,
});
new MutationObserver(snapshot).observe(document.getElementById("job"), {
  subtree: true, childList: true, characterData: true, attributes: true,
  attributeFilter: ["style", "hidden"],
});
"""
QUEUED_FIRST = re.compile(r"Queued at position 1(, starts in about [\d.]+ s)?")
RUNNING_STEP = re.compile(r"Running: step (\d+) of (\d+)")


def job_view(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """The recorded views, without repeats."""
    views: list[dict[str, Any]] = []
    for view in driver.execute_script("return window.jobView"):
        if not views or view != views[-1]:
            views.append(view)
    return views


def test_playground_shows_the_queue_position_then_the_progress_bar_moving(
    browser: webdriver.Chrome, api_url: str, client: httpx.Client, tmp_path: Path
) -> None:
    # 768 px at strength 1, batch 3, takes seconds on one CPU thread even on a quiet host:
    # ten steps over several of the page's one-second polls (batch 1 was too quick to
    # catch a step in between when the host was idle).
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(768, 768))
    open_playground(browser, api_url)
    Select(browser.find_element(By.ID, "inference_type")).select_by_value("a100")
    set_field(browser, "strength", "1")
    set_field(browser, "batch", "3")
    browser.find_element(By.ID, "image-file").send_keys(str(photo))
    browser.execute_script(RECORD_JOB_VIEW)
    slow = {"image": data_uri(photo.read_bytes()), "strength": 1.0, "celery": True}
    blocker = submit(client, inference_type="a100", **slow).json()["task_id"]
    watch(client, blocker, lambda e: e["state"] != "queued")  # it holds the a100 worker
    submit_and_wait(browser)
    assert image_width(browser) == 768
    assert poll(client, blocker)["status"] == "SUCCESS"

    views = job_view(browser)
    statuses = [v["status"] for v in views]
    queued = [i for i, v in enumerate(views) if QUEUED_FIRST.fullmatch(v["status"])]
    assert queued, statuses
    assert all(views[i]["hidden"] for i in queued)  # no bar while it waits
    steps = [(i, RUNNING_STEP.fullmatch(v["status"])) for i, v in enumerate(views)]
    running = [(i, int(m[1]), int(m[2])) for i, m in steps if m]
    assert any(0 < step < total for _, step, total in running), statuses
    for i, step, total in running:
        assert not views[i]["hidden"]
        assert float(views[i]["width"].rstrip("%")) == pytest.approx(100 * step / total, abs=0.1)
    assert max(queued) < min(i for i, _, _ in running)
    widths = [float(v["width"].rstrip("%")) for v in views if not v["hidden"]]
    assert widths == sorted(widths), views  # the bar only moves forward
    assert statuses[-1].startswith("Done")
    assert (views[-1]["hidden"], views[-1]["width"]) == (False, "100%")
