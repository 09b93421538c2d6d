"""The playground page in headless Debian Chromium, against the live stack."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import API_KEY, png_bytes
from tests.integration.conftest import ROOT

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


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """Debian's Chromium through Debian's chromedriver; nothing is downloaded."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("install Debian's chromium and chromium-driver (the Makefile does)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    # An explicit driver path: selenium-manager never runs.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
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


def test_playground_uploads_a_file_and_shows_the_images(
    browser: webdriver.Chrome, api_url: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(256, 256))
    browser.get(f"{api_url}/")
    wait(browser).until(lambda d: len(Select(d.find_element(By.ID, "app_id")).options) > 0)
    Select(browser.find_element(By.ID, "app_id")).select_by_value("tiny-sd")
    browser.find_element(By.ID, "api-key").send_keys(API_KEY)
    browser.find_element(By.ID, "image-file").send_keys(str(photo))
    batch = browser.find_element(By.ID, "batch")
    batch.clear()
    batch.send_keys("1")
    browser.find_element(By.ID, "submit").click()

    wait(browser, 90).until(lambda d: image_width(d) or shown_error(d))
    assert shown_error(browser) is None, shown_error(browser)
    assert image_width(browser) == 256
    assert browser.find_element(By.ID, "status").text.startswith("Done")
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
