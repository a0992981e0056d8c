"""The web page in a real headless Chromium (Debian's chromium + chromedriver, driven by selenium)."""

from __future__ import annotations

import base64
import shutil
import tempfile
from pathlib import Path

import pytest

from visionthink.data import synth
from visionthink.engines.transformers_engine import Request, TransformersEngine
from visionthink.images import make_views
from visionthink.serve.app import create_app
from visionthink.serve.background import BackgroundServer
from visionthink.serve.config import ServeConfig

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent "
                                "(apt-get install -y chromium chromium-driver)")


@pytest.fixture(scope="module")
def server(shipped_model):
    with BackgroundServer(create_app(TransformersEngine(*shipped_model), ServeConfig(model_name="tiny"))) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="visionthink-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={profile}", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_page_shows_low_res_view_resize_reasoning_answer_and_tokens(server, browser, shipped_model, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    item = synth.split_items("test", 2, seed=0)[1]
    image_path = tmp_path / "upload.png"
    item.image.save(image_path)
    expected = TransformersEngine(*shipped_model).run([Request(item.image, item.question)])[0]

    browser.get(server.url + "/")
    assert browser.title == "VisionThink"
    browser.find_element(By.ID, "image-input").send_keys(str(image_path))
    browser.find_element(By.ID, "question").send_keys(item.question)
    browser.find_element(By.ID, "submit").click()
    wait = WebDriverWait(browser, 30)
    wait.until(expected_conditions.visibility_of_element_located((By.ID, "result")))
    wait.until(lambda driver: driver.find_element(By.ID, "answer").text.strip())
    assert browser.find_element(By.ID, "error").text == ""

    assert browser.find_element(By.ID, "answer").text == expected.answer
    assert browser.find_element(By.ID, "resized").text == ("yes" if expected.resized else "no")
    tokens = browser.find_element(By.ID, "tokens").text
    assert tokens.startswith(f"{expected.visual_tokens} used vs {expected.full_res_visual_tokens} at full resolution")
    reasoning = browser.find_element(By.ID, "reasoning").text
    assert expected.turns[0].think and expected.turns[0].think in reasoning
    low = browser.find_element(By.ID, "lowres-img")
    source = low.get_attribute("src")
    assert low.tag_name == "img" and source.startswith("data:image/png;base64,")
    assert base64.b64decode(source.split(",", 1)[1]).startswith(b"\x89PNG")
    low_width, low_height = make_views(item.image, shipped_model[1].grid).low.size
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", low) == low_width
    assert f"{low_width}\u00d7{low_height}" in browser.find_element(By.ID, "lowres-caption").text
    browser.save_screenshot(str(tmp_path / "page.png"))


def test_page_reports_refusals(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_bytes(b"these are not pixels\n" * 20)
    browser.get(server.url + "/")
    browser.find_element(By.ID, "image-input").send_keys(str(not_an_image))
    browser.find_element(By.ID, "question").send_keys("What is this?")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 30).until(lambda driver: driver.find_element(By.ID, "error").text)
    assert "not a recognised image format" in browser.find_element(By.ID, "error").text
