"""Part A live: POST /api/backprop against --explain's printout, its bad inputs, and the
/backprop page in headless Chromium."""

import json
import os
import shutil
import threading
import urllib.error
import urllib.request

import jax.numpy as jnp
import pytest

from jaxmnist import backprop as bp
from jaxmnist import lesson, serve
from tests.conftest import REPO, run_in_process
from tests.test_serve import browser, serve_process, served_url, stop


@pytest.fixture(scope="module")
def lesson_server():
    httpd = serve.make_server(None, "127.0.0.1", 0)  # --backprop-only: no trained run
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def post(url, body: bytes):
    request = urllib.request.Request(f"{url}/api/backprop", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def explain_printout(capsys, tmp_path, *args) -> str:
    """What `python -m jaxmnist.backprop --explain ARGS` prints, less its "wrote" line."""
    r = run_in_process(bp.main, capsys, "--explain", "--out", str(tmp_path), *args)
    assert r.returncode == 0, r.stderr
    *text, wrote = r.stdout.splitlines(keepends=True)
    assert wrote.startswith("wrote ")
    return "".join(text)


def test_the_seed_example_equals_explain_to_every_digit(lesson_server, capsys, tmp_path):
    status, answer = post(lesson_server, b"{}")
    assert status == 200, answer
    assert answer["request"]["lrs"] == [0.1, 0.2, 0.5, 0.8, 1.0, 2.0]
    assert answer["request"]["lr_index"] == 2 and answer["request"]["step"] == 1
    assert answer["text"] == explain_printout(capsys, tmp_path)  # lr 0.5, step 1, no biases
    worked = answer["worked"]
    assert [r["name"] for r in worked["forward"]] == list(bp.INTERMEDIATES)
    assert [r["name"] for r in worked["local_derivatives"]] == [
        name for name, _, _ in bp.LOCAL_DERIVATIVES]
    assert {r["weight"] for r in worked["backward"]} == set(bp.WEIGHTS)
    # Each row's numbers are the printout's line for it.
    for r in worked["backward"]:
        assert (f"= {r['value']}   (jax.grad: {r['jax_grad']}, difference {r['difference']})"
                in answer["text"])
    # The error table is the committed study's (the seed's sheet: these rates, 500 steps).
    committed = (REPO / "experiments/results/backprop/final_error.txt").read_text().splitlines()
    assert [[f["lr"], f["start"], f["last"]] for f in answer["final"]] == [
        line.split() for line in committed[1:]]
    curves = answer["curves"]
    assert curves["iterations"] == list(range(501))
    assert len(curves["E_total"]) == 6 and all(len(c) == 501 for c in curves["E_total"])
    assert answer["network"]["edges"]["w5"] == ["w5 = 0.4", "∂E/∂w5 = 0.07216"]
    assert answer["network"]["biases"] is None


def test_a_second_start_equals_explain_too(lesson_server, capsys, tmp_path):
    body = {"b1": 0.35, "b2": "0.60", "lrs": [0.5, 1, 3], "lr_index": 1, "step": 7,
            "steps": 20}
    status, answer = post(lesson_server, json.dumps(body).encode())
    assert status == 200, answer
    printout = explain_printout(capsys, tmp_path, "--biases", "0.35,0.60", "--lr", "1",
                                "--step", "7")
    assert answer["text"] == printout
    assert answer["worked"]["title"] == printout.splitlines()[0]
    assert [f["lr"] for f in answer["final"]] == ["0.5", "1", "3"]
    assert answer["network"]["biases"].startswith("biases (fixed): b1 = 0.35")


def test_other_weights_and_inputs_are_the_project_s_own_gradients(lesson_server):
    body = {"w1": -1.5, "w4": 2, "w8": "-0.75", "i1": 0.9, "t2": 0.2, "lrs": [0.5]}
    status, answer = post(lesson_server, json.dumps(body).encode())
    assert status == 200, answer
    with lesson._float64():
        p = bp.init_params({"w1": -1.5, "w4": 2.0, "w8": -0.75}, dtype=jnp.float64)
        grads = bp.manual_grads(p, bp.example(jnp.float64, i1=0.9, t2=0.2))
        grads = {w: float(g) for w, g in grads.items()}
    shown = {r["weight"]: (float(r["value"]), float(r["jax_grad"]))
             for r in answer["worked"]["backward"]}
    for w in bp.WEIGHTS:
        assert shown[w][0] == pytest.approx(grads[w], rel=1e-8)  # 9 digits printed
        assert shown[w][1] == pytest.approx(grads[w], rel=1e-8)


def test_the_longest_run_answers_within_a_second_in_few_points(lesson_server):
    body = {"w2": 0.123, "steps": lesson.MAX_STEPS, "step": lesson.MAX_STEPS}
    status, answer = post(lesson_server, json.dumps(body).encode())
    assert status == 200 and answer["ms"] < 1000, answer.get("ms")
    iterations = answer["curves"]["iterations"]
    assert iterations[0] == 0 and iterations[-1] == lesson.MAX_STEPS
    assert len(iterations) <= lesson.MAX_CURVE_POINTS + 2
    assert answer["worked"]["title"].startswith(f"Step {lesson.MAX_STEPS} of")


@pytest.mark.parametrize("body, field, message", [
    (b'{"w3": "abc"}', "w3", "w3: not a number: 'abc'"),
    (b'{"w3": true}', "w3", "w3: not a number: True"),
    (b'{"i1": 1e9}', "i1", "i1: must be between -1000 and 1000"),
    (b'{"lrs": [0.5, 0]}', "lrs", "learning rates must be > 0, got 0"),
    (b'{"lrs": [-1]}', "lrs", "learning rates must be > 0, got -1"),
    (b'{"lrs": [1, 2, 3, 4, 5, 6, 7]}', "lrs", "give 1 to 6 learning rates"),
    (b'{"lrs": []}', "lrs", "give 1 to 6 learning rates"),
    (b'{"steps": 10001}', "steps", "steps: must be between 1 and 10000"),
    (b'{"steps": 2.5}', "steps", "must be a whole number"),
    (b'{"steps": 5, "step": 6}', "step", "step: must be between 1 and 5"),
    (b'{"lr_index": 6}', "lr_index", "lr_index: must be between 0 and 5"),
    (b'{"w9": 1}', "w9", "no such field"),
    (b'[1, 2]', None, "the body must be a JSON object"),
    (b'{"w1": ', None, "the body is not JSON"),
    (b'\xff\xfe', None, "the body is not JSON"),
    (b" " * (64 * 1024 + 1), None, "over the 65,536-byte limit"),
], ids=["text", "bool", "huge", "lr-0", "lr-negative", "seven-lrs", "no-lrs", "steps-over",
        "steps-fraction", "step-beyond", "index-beyond", "unknown", "array", "cut-json",
        "not-utf8", "over-64-KiB"])
def test_bad_input_is_a_400_naming_the_field_and_the_server_stays_up(
        lesson_server, body, field, message):
    status, answer = post(lesson_server, body)
    assert status == 400, answer
    assert message in answer["error"] and "\n" not in answer["error"], answer
    assert answer.get("field") == field
    assert post(lesson_server, b"{}")[0] == 200


def test_backprop_only_serves_the_lesson_and_says_there_is_no_run(lesson_server):
    for path in ("/", "/backprop"):
        with urllib.request.urlopen(f"{lesson_server}{path}", timeout=30) as response:
            assert "Backprop by hand" in response.read().decode()
    with urllib.request.urlopen(f"{lesson_server}/backprop.js", timeout=30) as response:
        script = response.read().decode()
    # Nothing fetched from elsewhere: the one URL is SVG's namespace.
    assert script.count("http") == script.count('"http://www.w3.org/2000/svg"') == 1
    for method, path in (("GET", "/api/info"), ("POST", "/api/predict")):
        request = urllib.request.Request(f"{lesson_server}{path}", method=method,
                                         data=b"x" if method == "POST" else None)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=30)
        assert e.value.code == 404 and "--backprop-only" in json.loads(e.value.read())["error"]


# --- the page in headless Chromium ---------------------------------------------------


@pytest.mark.slow
def test_page_redraws_the_curves_and_the_numbers_for_a_changed_learning_rate(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser()
    driver.set_window_size(1280, 1900)
    proc = serve_process("--backprop-only")
    try:
        driver.get(served_url(proc))  # http://…/backprop
        wait = WebDriverWait(driver, 30)
        status = lambda d: d.find_element(By.ID, "status").text  # noqa: E731
        wait.until(lambda d: status(d).startswith("computed"))

        def final_rows():
            rows = driver.find_elements(By.CSS_SELECTOR, "#final tbody tr")
            return [r.text.split() for r in rows]

        seed = lesson.lesson({})
        assert final_rows() == [[f["lr"], f["start"], f["last"]] for f in seed["final"]]
        assert driver.find_element(By.ID, "text").get_attribute("textContent") == seed["text"]

        # The third rate 0.5 becomes 0.7: its curve, its final error and the worked step
        # (the run at 0.5 is gone, so the first run's) are redrawn from the server.
        lr3 = driver.find_elements(By.CSS_SELECTOR, "input[name=lr]")[2]
        lr3.clear()
        lr3.send_keys("0.7")
        changed = lesson.lesson({"lrs": [0.1, 0.2, 0.7, 0.8, 1, 2]})
        wait.until(lambda d: final_rows() == [[f["lr"], f["start"], f["last"]]
                                              for f in changed["final"]])
        curves = driver.find_elements(By.CSS_SELECTOR, "#curve polyline")
        assert [c.get_attribute("data-lr") for c in curves] == [
            "0.1", "0.2", "0.7", "0.8", "1", "2"]
        wait.until(lambda d: d.find_element(By.ID, "worked-title").text
                   == changed["worked"]["title"])

        # A step picked with the slider: the network and the worked step follow it.
        driver.execute_script("const s = document.getElementById('step'); s.value = 40;"
                              "s.dispatchEvent(new Event('input'));")
        at40 = lesson.lesson({"lrs": [0.1, 0.2, 0.7, 0.8, 1, 2], "step": 40})
        wait.until(lambda d: d.find_element(By.ID, "worked-title").text
                   == at40["worked"]["title"])
        assert driver.find_element(By.ID, "e-total").text == at40["network"]["total"]
        edge = driver.find_elements(By.CSS_SELECTOR, "#network text[data-edge=w1]")
        assert [e.text for e in edge] == at40["network"]["edges"]["w1"]

        screenshot = tmp_path / "backprop.png"
        driver.save_screenshot(str(screenshot))
        if os.environ.get("JAXMNIST_BACKPROP_SCREENSHOT"):
            shutil.copy(screenshot, os.environ["JAXMNIST_BACKPROP_SCREENSHOT"])

        # A weight that is not a number: its one-line reason next to the field.
        w3 = driver.find_element(By.CSS_SELECTOR, "input[name=w3]")
        w3.clear()
        w3.send_keys("abc")
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".err[data-for=w3]").text
                   == "w3: not a number: 'abc'")
        assert "bad" in w3.get_attribute("class")
        w3.clear()
        w3.send_keys("0.25")
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".err[data-for=w3]").text == "")
    finally:
        driver.quit()
        log = stop(proc)
    assert '"POST /api/backprop" 400 w3: not a number' in log, log
