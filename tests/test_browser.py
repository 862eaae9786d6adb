"""The web page and the quiz in a real browser: Playwright driving Debian's headless Chromium."""

import shutil
import socket
import threading
import time
from pathlib import Path

import pandas as pd
import pytest


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium)")


def serving(run):
    """The app of `run` on a free loopback port in a thread: yields its URL, then stops it."""
    import uvicorn

    from cxrlab.serving.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(run, seed=1), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def server(lesson_run):  # the session's trained run (conftest), not a second training
    yield from serving(lesson_run)


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        pg = browser.new_page(viewport={"width": 1200, "height": 900})
        yield pg
        browser.close()


def test_upload_shows_probability_and_heatmap(server, page, lesson_run):
    split = pd.read_csv(lesson_run / "split.csv")
    image = split.loc[split["split"] == "test", "path"].iloc[0]
    page.goto(server + "/")
    page.wait_for_selector("#card dt")  # the model card loaded
    page.set_input_files("#file", image)
    page.wait_for_selector("#result:not([hidden])")
    page.wait_for_function("document.getElementById('heat').src.startsWith('data:image/png;base64,')")
    numbers = page.inner_text("#numbers")
    assert "probability" in numbers and "threshold" in numbers
    assert page.inner_text("#verdict") in ("effusion", "normal")
    page.fill("#opacity", "80")
    page.dispatch_event("#opacity", "input")
    assert page.eval_on_selector("#heat", "e => e.style.opacity") == "0.8"
    page.screenshot(path=str(ARTIFACTS / "predict.png"), full_page=True)


def test_a_failed_upload_clears_the_previous_image_and_heatmap(server, page, lesson_run, tmp_path):
    split = pd.read_csv(lesson_run / "split.csv")
    page.goto(server + "/")
    page.wait_for_selector("#card dt")
    assert page.eval_on_selector("#method", "e => e.value") == "layercam"  # the server's default map
    page.set_input_files("#file", split.loc[split["split"] == "test", "path"].iloc[0])
    page.wait_for_function("document.getElementById('heat').src.startsWith('data:image/png;base64,')")
    assert "upsampled to" in page.inner_text("#mapnote")  # the map says what it can show
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    page.set_input_files("#file", str(bad))
    page.wait_for_function("document.getElementById('error').textContent.length > 0")
    assert page.eval_on_selector("#heat", "e => e.hasAttribute('src')") is False
    assert page.eval_on_selector("#xray", "e => e.hasAttribute('src')") is False
    assert page.is_hidden("#result") and page.inner_text("#mapnote") == ""


def test_quiz_three_rounds_keeps_score(server, page):
    page.goto(server + "/quiz")
    for round_ in range(1, 4):
        page.wait_for_function(f"document.getElementById('round').textContent == '{round_}'")
        page.wait_for_function("!document.getElementById('normal').disabled")
        page.click("#normal")
        page.wait_for_selector("#reveal b")
        assert "Truth:" in page.inner_text("#reveal")
        page.click("#next")
    you, model = int(page.inner_text("#you")), int(page.inner_text("#model"))
    assert 0 <= you <= 3 and 0 <= model <= 3
    page.screenshot(path=str(ARTIFACTS / "quiz.png"), full_page=True)


@pytest.fixture(scope="module")
def multi_server(tmp_path_factory):
    """A small multi-label run (Mark and Effusion, test_multilabel's synthetic set) behind the web page."""
    from cxrlab.config import TrainConfig
    from cxrlab.training import train
    from test_multilabel import write_two_findings

    tmp = tmp_path_factory.mktemp("multi-web")
    data = write_two_findings(tmp / "nih")
    run = train(TrainConfig.recipe("lesson", source=str(data), findings="Mark,Effusion", epochs=2, image_size=64,
                                   cache_dir=str(tmp / "cache")), tmp / "run").dir.path
    for url in serving(run):
        yield url, data.parent / "images"


def test_a_multilabel_model_lists_every_finding_and_maps_the_one_clicked(multi_server, page):
    url, images = multi_server
    page.goto(url + "/")
    page.wait_for_selector("#card dt")
    assert "2 findings at once: Mark, Effusion" in page.inner_text("#card")
    page.set_input_files("#file", str(sorted(images.iterdir())[0]))
    page.wait_for_selector("#findings:not([hidden]) .finding")
    rows = page.query_selector_all("#findings .finding")
    assert len(rows) == 2 and {r.get_attribute("data-finding") for r in rows} == {"Mark", "Effusion"}
    first_map = page.get_attribute("#heat", "src")
    other = rows[1].get_attribute("data-finding")  # not the top one, whose map shows first
    rows[1].click()
    page.wait_for_function(f"document.getElementById('mapnote').textContent.includes('map of {other}')")
    assert page.get_attribute("#heat", "src") != first_map
    assert page.get_attribute(f"#findings .finding[data-finding='{other}']", "class").endswith("shown")
    page.screenshot(path=str(ARTIFACTS / "predict-multilabel.png"), full_page=True)
