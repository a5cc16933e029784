"""The draw-a-digit server: its JSON API with the committed model, and the page in a real
(headless) Chromium."""

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from jaxmnist import serve
from tests.conftest import REPO, run_in_process

RUN = REPO / "experiments" / "results" / "default"  # the committed, trained model


@pytest.fixture(scope="module")
def server():
    httpd = serve.make_server(RUN, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def post(url, body: bytes, headers=None):
    request = urllib.request.Request(f"{url}/api/predict", data=body, method="POST",
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_api_reads_mnist_test_digits_as_png_and_jpeg(server, mnist_test_digits):
    images, labels = mnist_test_digits[0][:20], mnist_test_digits[1][:20]
    for i, (img, label) in enumerate(zip(images, labels)):
        if i % 2:  # dark on light, resized to 280x280, PNG
            body = encode(Image.fromarray(255 - img).resize((280, 280)), "PNG")
        else:  # light on dark, 56x56, JPEG
            body = encode(Image.fromarray(img).resize((56, 56)), "JPEG")
        status, result = post(server, body)
        assert status == 200, result
        assert result["digit"] == label, (i, result["top3"])
        assert len(result["probabilities"]) == 10
        assert abs(sum(result["probabilities"]) - 1) < 1e-4
        assert result["top3"][0] == [result["digit"], max(result["probabilities"])]
        seen = np.asarray(result["input"])
        assert seen.shape == (28, 28) and seen.min() >= 0 and seen.max() <= 1


def half_a_png() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (280, 280), np.uint8)
    png = encode(Image.fromarray(noise), "PNG")
    return png[: len(png) // 2]


def big_blank_png(width, height) -> bytes:
    return encode(Image.new("L", (width, height), 0), "PNG")


@pytest.mark.parametrize("make_body, message", [
    (lambda: b"this is not an image", "not an image"),
    (lambda: b"", "empty file"),
    (lambda: encode(Image.new("L", (280, 280), 255), "PNG"), "blank"),
    (lambda: half_a_png(), "unreadable image"),
    (lambda: big_blank_png(8000, 6000), "over the 40,000,000-pixel limit"),
    (lambda: b"\0" * (5 * 1024 * 1024 + 1), "over the 5,242,880-byte limit"),
], ids=["text", "empty", "blank", "truncated-png", "48-megapixels", "over-5-MiB"])
def test_api_refuses_bad_input_with_one_line_and_stays_up(server, make_body, message):
    status, result = post(server, make_body())
    assert status == 400
    assert message in result["error"] and "\n" not in result["error"], result
    with urllib.request.urlopen(f"{server}/api/info", timeout=30) as response:
        assert json.loads(response.read())["params"] == 12_088


def test_api_needs_a_content_length(server):
    import http.client

    host, port = server.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/api/predict")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 400 and "Content-Length" in json.loads(response.read())["error"]


def test_unknown_paths_are_404_json(server):
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{server}/nowhere", timeout=30)
    assert e.value.code == 404 and "no such page" in json.loads(e.value.read())["error"]


def test_twenty_concurrent_requests_are_all_answered(server, mnist_test_digits):
    images, labels = mnist_test_digits[0][:20], mnist_test_digits[1][:20]
    bodies = [encode(Image.fromarray(img).resize((280, 280)), "PNG") for img in images]
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda body: post(server, body), bodies))
    assert [status for status, _ in answers] == [200] * 20
    assert [result["digit"] for _, result in answers] == labels.tolist()


def test_page_and_assets_are_served_from_the_package(server):
    for path, kind in (("/", "text/html"), ("/app.js", "text/javascript"),
                       ("/style.css", "text/css")):
        with urllib.request.urlopen(f"{server}{path}", timeout=30) as response:
            assert response.headers["Content-Type"].startswith(kind)
            text = response.read().decode()
            assert "http://" not in text and "https://" not in text  # nothing from a CDN
    with urllib.request.urlopen(f"{server}/api/info", timeout=30) as response:
        info = json.loads(response.read())
    assert info["run"] == "default" and info["accuracy"] == pytest.approx(0.9957)
    assert info["arch"] == "c8 c16 c16 p t8 v16 v16 v16 v16"


def run_serve(capsys, *args):
    """`python -m jaxmnist.serve ARGS` in this process, where it fails before serving."""
    code, _, err = run_in_process(serve.main, capsys, *args)
    return code, err


@pytest.mark.parametrize("args, message", [
    (["--run", "/nonexistent/run"], "no config.json"),
    (["--port", "70000"], "--port must be in 0-65535"),
    (["--port", "x"], "invalid int value"),
])
def test_serve_cli_errors_are_one_line(args, message, capsys):
    code, err = run_serve(capsys, *args)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_serve_cli_reports_a_busy_port(server, capsys):
    port = server.rsplit(":", 1)[1]
    code, err = run_serve(capsys, "--run", str(RUN), "--port", port)
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err, err
    assert len(err.strip().splitlines()) == 1, err


# --- the page in headless Chromium ---------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def browser():
    """Headless Debian Chromium driven by Selenium, or a skip that says what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no browser: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=900,620"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def serve_process(*args) -> subprocess.Popen:
    """`python -m jaxmnist.serve ARGS --port 0` started as a process of its own."""
    return subprocess.Popen([sys.executable, "-m", "jaxmnist.serve", *args, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def served_url(proc: subprocess.Popen) -> str:
    """The first URL the server's start-up line names ("serving … on http://…")."""
    line = proc.stdout.readline()
    assert "http://127.0.0.1:" in line, proc.stderr.read() if proc.poll() else line
    return line.split(" on ", 1)[1].split()[0]


def stop(proc: subprocess.Popen) -> str:
    """Stops the server; returns its log (stderr)."""
    proc.terminate()
    proc.wait(timeout=30)
    return proc.stderr.read()


# A 7 as a person draws it on the 280x280 pad: a bar, then the stem.
SEVEN = [[(70, 60), (120, 58), (170, 57), (215, 58)],
         [(215, 58), (195, 110), (170, 160), (150, 210), (140, 245)]]


def draw(driver, pad, strokes):
    from selenium.webdriver.common.action_chains import ActionChains

    for stroke in strokes:
        # Offsets are from the element's centre.
        (x, y), rest = stroke[0], stroke[1:]
        actions = ActionChains(driver, duration=20)
        actions.move_to_element_with_offset(pad, x - 140, y - 140).click_and_hold()
        for nx, ny in rest:
            actions.move_by_offset(nx - x, ny - y)
            x, y = nx, ny
        actions.release().perform()


@pytest.mark.slow
def test_page_reads_a_digit_drawn_on_the_canvas(tmp_path):
    driver = browser()
    proc = serve_process("--run", str(RUN))
    try:
        driver.get(served_url(proc))
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "parameters" in d.find_element(By.ID, "run-info").text)
        pad = driver.find_element(By.ID, "pad")
        draw(driver, pad, SEVEN)
        # The prediction after the last stroke: predictions stop changing.
        wait.until(lambda d: d.find_element(By.ID, "digit").text != "?")
        time.sleep(1.0)
        digit = driver.find_element(By.ID, "digit").text
        bars = driver.find_elements(By.CSS_SELECTOR, "#top3 li")
        screenshot = tmp_path / "page.png"
        driver.save_screenshot(str(screenshot))
        if os.environ.get("JAXMNIST_SCREENSHOT"):
            shutil.copy(screenshot, os.environ["JAXMNIST_SCREENSHOT"])
        assert digit == "7", driver.find_element(By.ID, "status").text
        assert len(bars) == 3 and bars[0].text.startswith("7")
        # What the model saw is drawn: some of its 28x28 pixels are lit.
        lit = driver.execute_script(
            "const d = document.getElementById('seen').getContext('2d')"
            ".getImageData(0, 0, 28, 28).data; let n = 0;"
            "for (let i = 0; i < d.length; i += 4) n += d[i] > 100; return n;")
        assert 20 < lit < 400
        driver.find_element(By.ID, "clear").click()
        assert driver.find_element(By.ID, "digit").text == "?"
    finally:
        driver.quit()
        log = stop(proc)
    assert '"POST /api/predict" 200 7' in log, log
