"""The web page in a real headless Chromium (Debian's chromium + chromedriver, driven by selenium)."""

from __future__ import annotations

import base64
import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import REPO  # tests/ is on sys.path
from PIL import Image, ImageStat
from test_serve import serving

from visionthink.data import synth
from visionthink.engines.transformers_engine import Request, TransformersEngine
from visionthink.images import make_views
from visionthink.serve.config import ServeConfig

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
EXAMPLES = REPO / "examples"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent "
                                "(apt-get install -y chromium chromium-driver)")


@pytest.fixture(scope="module")
def server(shipped_model):
    with serving(TransformersEngine(*shipped_model), ServeConfig(model_name="tiny", examples_dir=EXAMPLES)) as running:
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


@pytest.fixture(scope="module")
def zoom_item():
    return next(i for i in synth.split_items("test", 12, seed=0) if i.family == "fine_small")


@pytest.fixture(scope="module")
def zooming_server(shipped_model, zoom_item):
    """A server whose zoom engine zooms on the item's label (the shipped model was never trained to zoom)."""
    from test_serve_zoom import FirstTurnZooms  # tests/ is on sys.path

    from visionthink.tools.zoom import oracle_box

    low = make_views(zoom_item.image, shipped_model[1].grid).low
    zoom = FirstTurnZooms(*shipped_model, {zoom_item.question: oracle_box(zoom_item.label_box, zoom_item.image.size,
                                                                            low.size)})
    with serving(TransformersEngine(*shipped_model), ServeConfig(model_name="tiny"), zoom_engine=zoom) as running:
        yield running


def test_page_shows_the_zoom_crop_its_place_and_its_tokens(zooming_server, browser, shipped_model, zoom_item,
                                                            tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from visionthink.images import zoom_region

    grid = shipped_model[1].grid
    expected = TransformersEngine(*shipped_model, protocol="visionthink-zoom").run(
        [Request(zoom_item.image, zoom_item.question, True, zoom_item.label_box)], "oracle-zoom")[0]
    views = make_views(zoom_item.image, grid)
    region = zoom_region(expected.zoom_box, views, grid)
    image_path = tmp_path / "upload.png"
    zoom_item.image.save(image_path)

    browser.get(zooming_server.url + "/")
    assert "zoom" in [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "mode")).options]
    browser.find_element(By.ID, "image-input").send_keys(str(image_path))
    browser.find_element(By.ID, "question").send_keys(zoom_item.question)
    Select(browser.find_element(By.ID, "mode")).select_by_value("zoom")
    browser.find_element(By.ID, "submit").click()
    wait = WebDriverWait(browser, 30)
    wait.until(lambda driver: driver.find_element(By.ID, "answer").text.strip())
    assert browser.find_element(By.ID, "error").text == ""
    assert browser.find_element(By.ID, "answer").text == expected.answer
    assert browser.find_element(By.ID, "action").text == "zoomed into a region"
    assert browser.find_element(By.ID, "resized").text == "no"
    low_tokens, crop_tokens = expected.visual_tokens_per_turn
    assert browser.find_element(By.ID, "tokens").text == (
        f"{expected.visual_tokens} used vs {expected.full_res_visual_tokens} at full resolution "
        f"({round(100 * expected.visual_tokens / expected.full_res_visual_tokens)}%): low view {low_tokens} + crop "
        f"{crop_tokens}")
    crop = browser.find_element(By.ID, "zoom-img")
    assert crop.is_displayed()
    crop_size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", crop)
    assert crop_size == [region[2] - region[0], region[3] - region[1]] == [56, 56]
    assert f"56\u00d756 px at full resolution, {crop_tokens} visual tokens" in \
        browser.find_element(By.ID, "zoom-caption").text
    outline = browser.find_element(By.ID, "zoom-outline")
    assert outline.is_displayed()
    box = browser.execute_script(
        "const o = arguments[0].getBoundingClientRect(), i = arguments[1].getBoundingClientRect();"
        "return [o.left - i.left, o.top - i.top, o.width, o.height, i.width, i.height];",
        outline, browser.find_element(By.ID, "lowres-img"))
    scale_x, scale_y = box[4] / views.high.width, box[5] / views.high.height
    wanted = [region[0] * scale_x, region[1] * scale_y, (region[2] - region[0]) * scale_x,
              (region[3] - region[1]) * scale_y]
    assert all(abs(got - want) <= 2 for got, want in zip(box[:4], wanted, strict=True)), (box, wanted)
    browser.save_screenshot(str(tmp_path / "zoom-page.png"))

    Select(browser.find_element(By.ID, "mode")).select_by_value("low")  # a later reply without a zoom hides the crop
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda driver: driver.find_element(By.ID, "action").text == "answered from the first view")
    assert not browser.find_element(By.ID, "zoom-figure").is_displayed()
    assert not browser.find_element(By.ID, "zoom-outline").is_displayed()


def _set_slider(browser, value: float) -> None:
    """Move the threshold slider as a user's drag ends: its value, then `input` and `change`."""
    browser.execute_script("const s = document.getElementById('threshold'); s.value = arguments[0];"
                           "s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change'));", str(value))


def test_gallery_and_threshold_slider_change_the_decision(server, browser, shipped_model, tmp_path):
    """The gallery lists the examples; clicking `unsure` asks its question; the slider below P(tool) makes the model
    ask for full resolution (the view it got is shown), above it makes it answer from the low view."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    entries = json.loads((EXAMPLES / "questions.json").read_text())
    entry = next(e for e in entries if e["title"] == "unsure")
    image = Image.open(EXAMPLES / entry["file"]).convert("RGB")
    expected = TransformersEngine(*shipped_model).run([Request(image, entry["question"])])[0]

    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda driver: driver.find_element(By.ID, "gallery").get_attribute("data-loaded"))
    buttons = browser.find_elements(By.CSS_SELECTOR, "#gallery .example")
    assert [b.get_attribute("data-file") for b in buttons] == [e["file"] for e in entries]
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                      b.find_element(By.TAG_NAME, "img")) in (112, 168) for b in buttons)
    assert browser.find_element(By.ID, "gallery-block").is_displayed()

    next(b for b in buttons if b.get_attribute("data-file") == entry["file"]).click()
    wait.until(lambda driver: driver.find_element(By.ID, "answer").text.strip())
    assert browser.find_element(By.ID, "error").text == ""
    assert browser.find_element(By.ID, "question").get_attribute("value") == entry["question"]
    assert browser.find_element(By.ID, "answer").text == expected.answer
    assert browser.find_element(By.ID, "expected").text == entry["answer"]
    assert browser.find_element(By.ID, "decision").text.startswith("greedy")
    p_tool = float(browser.find_element(By.ID, "p-tool").text)
    assert p_tool == pytest.approx(expected.p_tool, abs=1e-3) and 0.05 < p_tool < 0.95

    below, above = math.floor((p_tool - 0.02) * 100) / 100, math.ceil((p_tool + 0.02) * 100) / 100
    _set_slider(browser, below)
    wait.until(lambda driver: f"threshold {below:.2f}" in driver.find_element(By.ID, "decision").text)
    assert browser.find_element(By.ID, "threshold-value").text == f"{below:.2f}"
    assert not browser.find_element(By.ID, "greedy").is_selected()
    assert browser.find_element(By.ID, "resized").text == "yes"
    assert browser.find_element(By.ID, "decision").text == (
        f"P(tool) {p_tool:.3f} \u2265 threshold {below:.2f} \u2192 asked for full resolution")
    high = browser.find_element(By.ID, "highres-img")
    assert high.is_displayed()
    assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", high) == \
        list(image.size)
    assert f"{image.width}\u00d7{image.height} px" in browser.find_element(By.ID, "highres-caption").text
    full = expected.full_res_visual_tokens
    assert browser.find_element(By.ID, "tokens").text.startswith(f"{full * 5 // 4} used vs {full} at full resolution")
    assert browser.find_element(By.ID, "threshold-mark").is_displayed()
    browser.save_screenshot(str(tmp_path / "resized.png"))

    _set_slider(browser, above)
    wait.until(lambda driver: f"threshold {above:.2f}" in driver.find_element(By.ID, "decision").text)
    assert browser.find_element(By.ID, "resized").text == "no"
    assert browser.find_element(By.ID, "decision").text == (
        f"P(tool) {p_tool:.3f} < threshold {above:.2f} \u2192 answered from the first view")
    assert not browser.find_element(By.ID, "highres-figure").is_displayed()
    assert browser.find_element(By.ID, "tokens").text.startswith(f"{full // 4} used vs {full} at full resolution")

    shot = tmp_path / "slider.png"
    assert browser.save_screenshot(str(shot))
    with Image.open(shot) as picture:
        assert picture.format == "PNG" and picture.width >= 800 and picture.height >= 600
        colours = picture.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # text, images and bars, not a blank page
        assert max(ImageStat.Stat(picture.convert("L")).stddev) > 10
    with Image.open(tmp_path / "resized.png") as resized, Image.open(shot) as answered:
        assert resized.tobytes() != answered.tobytes()  # the decision shown changed

    mode = Select(browser.find_element(By.ID, "mode"))
    assert mode.first_selected_option.get_attribute("value") == ""  # the served model's own mode
    mode.select_by_value("low")  # a mode without a decision takes no threshold
    assert not browser.find_element(By.ID, "threshold").is_enabled()
    mode.select_by_value("visionthink")
    assert browser.find_element(By.ID, "threshold").is_enabled()
