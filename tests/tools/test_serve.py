"""tools/serve.py: the page's action answers every bad input with a message (never an exception),
and the page, served on a loopback port and driven by headless Chromium, shows detections with
their phrases.

The browser test serves tools/serve.py's page for a saved tiny detector on a free loopback port
(in this process: the model and Gradio are imported once) and drives Debian's chromium through
selenium with /usr/bin/chromedriver (nothing downloaded). It is skipped only where Chromium
cannot be started. FIBER_SERVE_SCREENSHOT=<path> keeps a copy of its screenshot.
"""

import os
import shutil
import socket

import cv2
import gradio
import numpy as np
import pytest
from PIL import Image

from fiber_det.predictor import GroundingPredictor
from tests.modeling.grounding.tiny_detector import (
    NAMES,
    SCENES,
    draw_scene,
    trained_tiny_detector,
)
from tests.tools.tool_module import load_tool

CHROMEDRIVER = "/usr/bin/chromedriver"
PROMPT = "red. green. blue. yellow."  # the tiny detector's training prompt
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--window-size=1400,1000",
]


def _serve_tool():
    return load_tool("serve")


@pytest.fixture(scope="module")
def saved_model(tiny_tokenizer, tmp_path_factory):
    """The trained tiny detector as a saved-model directory, and its predictor."""
    model, cfg, _ = trained_tiny_detector(tiny_tokenizer)
    predictor = GroundingPredictor(cfg, tokenizer=tiny_tokenizer, model=model)
    return predictor.save_pretrained(tmp_path_factory.mktemp("serve") / "model"), predictor


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    """A 384x384 picture of the second training scene (green, yellow and red boxes)."""
    path = tmp_path_factory.mktemp("upload") / "scene.png"
    scene = cv2.resize(draw_scene(128, 128, SCENES[1]), (384, 384), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(path), scene)
    return path


@pytest.fixture(scope="module")
def service(saved_model):
    return _serve_tool().DetectionService(saved_model[1], max_pixels=384 * 384)


def scene_detections(service, scene_file) -> tuple[list[dict], int]:
    """The predictor's detections of the scene with score >= 0.3 (the page's default), as the
    page lists them, and the number before the threshold."""
    result = service.predictor(cv2.imread(str(scene_file)), names=NAMES)
    return service.demo.detections(result, 0.3), len(result.instances)


def assert_the_scene_colours_score_highest(labels: list[str]) -> None:
    """The scene holds a red, a green and a yellow box: the trained model's three best
    detections. (What scores below them differs between CPUs: the tiny model's training
    follows each CPU's float rounding.)"""
    assert sorted(labels[:3]) == ["green", "red", "yellow"], labels


def test_the_action_returns_the_drawn_boxes_and_the_json(service, scene_file):
    message, picture, document = service(str(scene_file), PROMPT, "", 0.3)
    expected, total = scene_detections(service, scene_file)
    assert document["detections"] == expected and document["labels"] == NAMES
    assert_the_scene_colours_score_highest([d["label"] for d in expected])
    listed = ", ".join(f"{d['label']} {d['score']:.2f}" for d in expected)
    assert message == (
        f"**{len(expected)} detection(s)** with score >= 0.30 ({total} before the threshold): "
        f"{listed}"
    )
    assert picture.shape == (384, 384, 3)
    _, _, grounded = service(str(scene_file), "a red box and a blue box", "red box; blue box", 0.0)
    assert grounded["labels"] == ["red box", "blue box"]


@pytest.mark.parametrize(
    ("image", "prompt", "phrases", "message"),
    [
        (None, "red.", "", "upload an image first"),
        ("scene", "  ", "", "type class names"),
        ("scene", "a red box", "green star", "phrase 'green star' does not occur in the prompt"),
        ("scene", "red " * 300, "", "tokens long and the model reads at most 256"),
        ("huge", "red.", "", "the image is 385x384 pixels"),
        ("text", "red.", "", "the uploaded file is not an image"),
        ("scene", "red. ?!.", "", r"names[1] = '?!' has no letter or digit"),
    ],
)
def test_bad_input_gets_a_message_never_an_exception(
    service, scene_file, tmp_path, image, prompt, phrases, message
):
    paths = {"scene": str(scene_file), "huge": str(tmp_path / "huge.png")}
    paths["text"] = str(tmp_path / "notes.png")
    cv2.imwrite(paths["huge"], np.zeros((384, 385, 3), np.uint8))
    (tmp_path / "notes.png").write_text("not an image")
    shown, picture, document = service(paths.get(image), prompt, phrases, 0.3)
    assert shown.startswith("**Error:**") and message in shown
    assert picture is None and document is None


def test_a_model_failure_is_a_message_and_the_service_keeps_working(service, scene_file):
    predictor = service.predictor
    service.predictor = None  # calling it raises TypeError deep inside the action
    try:
        shown, _, _ = service(str(scene_file), "red.", "", 0.3)
    finally:
        service.predictor = predictor
    assert shown.startswith("**Error:**")
    assert service(str(scene_file), "red.", "", 0.3)[0].startswith("**")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium through selenium; skipped only where it cannot be started."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    if not (os.path.exists(CHROMEDRIVER) and shutil.which("chromium")):
        pytest.skip("Chromium cannot be started: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except WebDriverException as error:
        pytest.skip(f"Chromium cannot be started: {error.msg}")
    yield driver
    driver.quit()


@pytest.fixture
def server(service):
    """The page of tools/serve.py (its build_app and action) on a free loopback port."""
    app = _serve_tool().build_app(service, "tiny test detector")
    app.queue().launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True)
    yield app.local_url
    app.close()


def test_main_serves_a_saved_model_on_the_cpu(saved_model, monkeypatch):
    launched = {}
    monkeypatch.setattr(gradio.Blocks, "launch", lambda app, **kwargs: launched.update(kwargs))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    _serve_tool().main(["--model", str(saved_model[0]), "--port", "7861"])
    assert launched == {"server_name": "127.0.0.1", "server_port": 7861, "max_file_size": "50mb"}
    assert Image.MAX_IMAGE_PIXELS is None  # the size is checked by the page's action
    with pytest.raises(SystemExit, match="serve: .*nowhere: no such model directory"):
        _serve_tool().main(["--model", str(saved_model[0].parent / "nowhere")])


def test_the_page_shows_detections_in_a_real_browser(
    browser, server, service, scene_file, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(server)
    detect = wait.until(ready.element_to_be_clickable((By.ID, "detect")))
    message = browser.find_element(By.ID, "message")
    detect.click()  # no image yet: a message in the page, and the server keeps serving
    wait.until(lambda _: "upload an image first" in message.text)
    browser.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys(
        str(scene_file)
    )
    wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#input-image img"))
    browser.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys(PROMPT)
    detect.click()
    wait.until(lambda _: "detection(s)" in message.text)
    expected, _ = scene_detections(service, scene_file)
    labels = [d["label"] for d in expected]
    assert message.text.startswith(f"{len(expected)} detection(s) with score >= 0.30")
    assert [phrase.split()[0] for phrase in message.text.split(": ")[1].split(", ")] == labels
    assert_the_scene_colours_score_highest(labels)
    shown = "".join(browser.find_element(By.ID, "detections-json").text.split())
    assert shown.count('"label":') == len(expected)
    assert all(f'"label":"{color}"' in shown for color in ("red", "green", "yellow"))
    assert browser.find_elements(By.CSS_SELECTOR, "#result-image img")
    screenshot = tmp_path / "serve_screenshot.png"
    assert browser.save_screenshot(str(screenshot))
    if os.getenv("FIBER_SERVE_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["FIBER_SERVE_SCREENSHOT"])
