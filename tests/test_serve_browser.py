"""The page at `/` of `lipsync-tool serve` in a real browser: headless Chromium driven by Selenium.

A real server runs the fake engine (``serve_harness``); the page submits a job, follows it to
``done`` and plays the result in its ``<video>``.  The page keeps what it saw in
``window.lipsyncPage`` (the states in order, the highest progress shown while running, how it
played the live stream), which the tests read back.

Without ``/usr/bin/chromedriver`` the module is skipped, unless ``LIPSYNC_TOOL_REQUIRE_BROWSER``
is set (CI sets it): then it fails.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import httpx
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REQUIRED = bool(os.environ.get("LIPSYNC_TOOL_REQUIRE_BROWSER"))
PORTRAIT = Path(__file__).parent / "data" / "portrait.jpg"
WAIT_S = 120
ENDED = ("done", "failed", "cancelled")
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--window-size=1000,1400",
)
H264 = 'video/mp4; codecs="avc1.42E01E"'

if not CHROMEDRIVER.exists() and not REQUIRED:
    pytest.skip(f"no {CHROMEDRIVER} (apt-get install chromium chromium-driver); set LIPSYNC_TOOL_REQUIRE_BROWSER=1 to fail instead", allow_module_level=True)
if not REQUIRED:
    pytest.importorskip("selenium", reason="selenium is not installed (the `test` extra has it)")

pytestmark = pytest.mark.slow


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium with a fresh profile; its console log is kept."""
    assert CHROMEDRIVER.exists(), f"LIPSYNC_TOOL_REQUIRE_BROWSER is set but {CHROMEDRIVER} is missing"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.set_script_timeout(60)
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, timeout: float = WAIT_S, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message)


def text(driver, element_id: str) -> str:
    return driver.execute_script("return document.getElementById(arguments[0]).textContent", element_id).strip()


def displayed(driver, element_id: str) -> bool:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).is_displayed()


def click(driver, element_id: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, element_id).click()


def open_page(driver, srv) -> dict:
    """Load `/` and wait until the engine select shows the server's default; the engines answer."""
    engines = httpx.get(srv.url + "/v1/engines", headers=srv.headers, timeout=30).json()
    driver.get(srv.url + "/")
    wait(
        driver,
        lambda d: d.execute_script("return document.getElementById('engine').value") == engines["default"],
        60,
        "the engine select never showed the default engine",
    )
    chosen = next(e for e in engines["engines"] if e["name"] == engines["default"])
    assert displayed(driver, "preset") == bool(chosen["presets"]), "the preset select shows exactly when the engine has presets"
    assert not displayed(driver, "error"), text(driver, "error")
    return engines


def wait_ended(driver, srv) -> str:
    """Wait for the page's job to end; its state as the page shows it."""
    wait(driver, lambda d: text(d, "job-id"), 60, "the page showed no job id")
    wait(driver, lambda d: text(d, "state") in ENDED, WAIT_S, "the job did not end")
    state = text(driver, "state")
    if state != "done":
        raise AssertionError(f"the job ended {state}: {text(driver, 'error')}\n{srv.log.read_text()[-3000:]}")
    assert not displayed(driver, "error"), text(driver, "error")
    return text(driver, "job-id")


def uncaught_errors(driver) -> list[str]:
    """Script errors in the console (a failed resource load, like the 404 of a playlist not yet written, is not one)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]


def assert_result_plays(driver, srv, job_id: str) -> None:
    """The #result video loads, plays and advances; where the browser has no H.264, the MP4 is at least served."""
    src = driver.execute_script("return document.getElementById('result').src")
    assert src.endswith(f"/v1/jobs/{job_id}/video"), src
    assert displayed(driver, "result") and displayed(driver, "download")
    can_h264 = driver.execute_script("return document.createElement('video').canPlayType(arguments[0])", H264)
    answer = httpx.get(src, headers=srv.headers, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("video/mp4") and len(answer.content) > 0
    if not can_h264:
        # This Chromium cannot decode H.264 (a build without proprietary codecs): the fetch above is what can be checked.
        warnings.warn(f"this Chromium cannot play {H264}: checked only that the page's video URL serves {len(answer.content)} bytes of video/mp4", stacklevel=2)
        return
    ready = "const v = document.getElementById('result'); return v.error === null && v.readyState >= 2 && v.duration > 0;"
    wait(driver, lambda d: d.execute_script(ready), 60, "the result video never loaded")
    driver.execute_script("document.getElementById('result').play().catch(() => {});")
    start = driver.execute_script("return document.getElementById('result').currentTime")
    wait(driver, lambda d: d.execute_script("return document.getElementById('result').currentTime") > start + 0.2, 30, "the result video does not advance")
    assert driver.execute_script("return document.getElementById('result').error") is None


def test_the_bundled_sample_renders_and_plays(server, browser):
    open_page(browser, server)
    click(browser, "sample")
    assert browser.execute_script("return document.getElementById('image').disabled && document.getElementById('audio').disabled")
    click(browser, "submit")
    job_id = wait_ended(browser, server)
    job = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=server.headers, timeout=30).json()
    assert job["state"] == "done"
    assert browser.execute_script("return document.getElementById('progress').value") == 1
    assert not displayed(browser, "cancel")
    assert_result_plays(browser, server, job_id)
    assert not uncaught_errors(browser)


def test_uploaded_files_with_hls_show_progress_and_play(server, browser, media):
    from selenium.webdriver.common.by import By

    audio = media.audio("speech.wav", seconds=3.0)
    open_page(browser, server)
    browser.find_element(By.ID, "image").send_keys(str(PORTRAIT))
    browser.find_element(By.ID, "audio").send_keys(str(audio))
    click(browser, "hls")
    click(browser, "advanced")
    # Slow the fake render (10 batches of 8 frames, 0.4 s apart) so the page sees it running and the stream grow.
    browser.find_element(By.ID, "options").send_keys('{"fake_frame_delay": 0.4, "hls_segment_seconds": 1}')
    click(browser, "submit")
    wait(browser, lambda d: text(d, "job-id"), 60, "the page showed no job id")
    started = time.monotonic()
    job_id = wait_ended(browser, server)
    seen = browser.execute_script("return window.lipsyncPage")
    assert seen["jobId"] == job_id
    assert "running" in seen["seenStates"], seen
    assert seen["seenStates"][-1] == "done", seen
    assert 0 < seen["maxProgress"] <= 1, f"no progress was shown while running: {seen}"
    assert seen["hlsMode"] in ("hls.js", "native"), f"the live stream was not played ({time.monotonic() - started:.1f} s): {seen}"
    job = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=server.headers, timeout=30).json()
    assert job["links"].get("hls"), job
    assert_result_plays(browser, server, job_id)
    assert not uncaught_errors(browser)
