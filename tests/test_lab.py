"""The architecture lab (/architecture, jaxmnist.lab): its API on a real server, training
jobs on synthetic data, and (slow) a server killed mid-job and the page in Chromium."""

import io
import json
import os
import shutil
import signal
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

from jaxmnist import configs, lab, rundir, serve
from jaxmnist.train import __main__ as train_cli
from tests.conftest import REPO
from tests.test_serve import SEVEN, browser, draw, serve_process, served_url, stop

SEED = configs.SEED_ARCH


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory, synthetic_splits):
    """A server without a trained run (as --backprop-only), its lab training on 1,024
    synthetic images into a scratch folder."""
    runs = tmp_path_factory.mktemp("lab-runs")
    httpd = serve.make_server(None, "127.0.0.1", 0, runs_dir=runs, splits=synthetic_splits)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.RequestHandlerClass.lab
    httpd.shutdown()
    httpd.server_close()


def call(url: str, method: str, path: str, body=None, raw: bool = False):
    data = None if body is None else (body if raw else json.dumps(body).encode())
    request = urllib.request.Request(url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def until_ended(url: str, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, job = call(url, "GET", f"/api/train/{job_id}")
        assert status == 200, job
        if job["state"] not in ("running", "cancelling"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_the_pages_are_served_without_a_trained_run(lab_server):
    url, _ = lab_server
    for path, text in [("/architecture", b"the architecture lab"), ("/lab.js", b"/api/train")]:
        with urllib.request.urlopen(url + path, timeout=30) as response:
            assert response.status == 200 and text in response.read()


def test_the_architecture_api_gives_the_layer_table(lab_server):
    url, _ = lab_server
    status, answer = call(url, "POST", "/api/architecture", {"arch": SEED})
    assert status == 200, answer
    rows = {r["name"]: r for r in answer["rows"]}
    assert rows["block7"]["field"] == 24 and rows["block7"]["output"] == [6, 6, 16]
    assert rows["block7"]["centre"] == [3, 3, 24]  # of the 6x6 map, unit 3: rows 3-26
    assert answer["totals"]["params"] == 12_088 and answer["whole_image"]
    assert answer["over_limit"] is None
    # options change the net as Config's fields do: a dense head, no norm
    status, answer = call(url, "POST", "/api/architecture",
                          {"arch": SEED, "options": {"head": "dense", "norm": "none"}})
    assert status == 200 and answer["totals"]["params"] == 12_088 - 160 - 208 + 5_760


@pytest.mark.parametrize("body, field, message", [
    ({"arch": "c8 p q"}, "arch", "arch: unknown layer 'q'"),
    ({"arch": "c8 p p p p p p"}, "arch", "arch: 'p' (layer 6) pools a 1x1 map"),
    ({"arch": "v4 " * 14}, "arch", "arch: 'v4' (layer 14) shrinks the 2x2 map it gets"),
    ({"arch": ""}, "arch", "arch: expected a layer string"),
    ({"arch": SEED, "recipe": "teacher"}, "recipe", "recipe: expected one of default,"),
    ({"arch": SEED, "options": {"norm": "group"}}, "options.norm",
     "options.norm: expected 'batch' or 'layer' or 'none', got 'group'"),
    ({"arch": SEED, "options": {"teacher": "x"}}, "options.teacher",
     "options.teacher: not an option here"),
    ({"arch": SEED, "options": {"lr": -1}}, "options.lr", "options.lr: must be a finite"),
    ({"arch": SEED, "depth": 3}, "depth", "depth: unknown field"),
])
def test_a_bad_net_or_field_is_a_400_naming_it(lab_server, body, field, message):
    url, _ = lab_server
    status, answer = call(url, "POST", "/api/architecture", body)
    assert status == 400 and answer["field"] == field, answer
    assert answer["error"].startswith(message) and "\n" not in answer["error"]


def test_a_body_that_is_not_json_is_a_400(lab_server):
    url, _ = lab_server
    status, answer = call(url, "POST", "/api/architecture", b"arch=c8", raw=True)
    assert status == 400 and answer["error"].startswith("the body is not JSON")


def test_a_job_runs_to_completion_into_an_ordinary_run_directory(lab_server):
    url, the_lab = lab_server
    status, job = call(url, "POST", "/api/train",
                       {"arch": "c4 p v8", "epochs": 1, "max_steps": 3})
    assert status == 202 and job["state"] == "running", job
    job = until_ended(url, job["id"])
    assert job["state"] == "done" and job["error"] is None, job
    assert [m["epoch"] for m in job["metrics"]] == [1] and job["step"] == job["steps"] == 3
    run = the_lab.runs_dir / job["id"]
    assert rundir.read_config(run).arch == "c4 p v8" and rundir.progress(run) == (1, 1)
    assert (run / "curves.png").is_file()
    runs = {r["name"]: r for r in call(url, "GET", "/api/runs")[1]["runs"]}
    assert runs[job["id"]]["finished"] and runs[job["id"]]["arch"] == "c4 p v8"


def test_one_job_at_a_time_and_a_cancel_keeps_the_complete_epochs(lab_server):
    url, the_lab = lab_server
    request = {"arch": "c4 p v8", "epochs": 20, "options": {"lr": 0.05}}
    with ThreadPoolExecutor(4) as pool:  # four at once: exactly one is taken
        answers = list(pool.map(lambda _: call(url, "POST", "/api/train", request), range(4)))
    assert sorted(status for status, _ in answers) == [202, 409, 409, 409]
    job = next(answer for status, answer in answers if status == 202)
    busy = next(answer for status, answer in answers if status == 409)
    assert busy["error"].startswith(f"job {job['id']} is running ('c4 p v8', epoch ")
    assert busy["error"].endswith("): one job at a time") and busy["job"]["id"] == job["id"]
    while call(url, "GET", f"/api/train/{job['id']}")[1]["epoch"] < 2:
        time.sleep(0.01)
    status, cancelling = call(url, "DELETE", f"/api/train/{job['id']}")
    assert status == 200 and cancelling["state"] in ("cancelling", "cancelled")
    job = until_ended(url, job["id"])
    assert job["state"] == "cancelled", job
    run = the_lab.runs_dir / job["id"]
    done, epochs = rundir.progress(run)
    assert epochs == 20 and 1 <= done < 20
    assert [m["epoch"] for m in rundir.read_metrics(run)] == list(range(1, done + 1))
    runs = {r["name"]: r for r in call(url, "GET", "/api/runs")[1]["runs"]}
    assert not runs[job["id"]]["finished"] and runs[job["id"]]["complete"] == done
    # Resumable as any run: --resume alone takes the run's own config.json.
    args = train_cli.build_parser().parse_args(
        ["--out", str(the_lab.runs_dir), "--name", job["id"], "--resume"])
    assert train_cli.config_from_args(args) == rundir.read_config(run)
    assert job["resume"] == (f"python -m jaxmnist.train --out {the_lab.runs_dir} "
                             f"--name {job['id']} --resume")


@pytest.mark.parametrize("body, field, message", [
    ({"arch": "c4 c4x59", "epochs": 1}, "arch",  # 60 maps of 28x28x4
     "arch: 188,160 activations per image is over the lab's limit of 150,000"),
    ({"arch": "c32 c64 c64 c64 c64", "epochs": 1}, "arch",
     "arch: 101,381,248 multiply-adds per image is over the lab's limit of 30,000,000"),
    ({"arch": SEED, "epochs": 1, "options": {"batch_size": 1024}}, "options.batch_size",
     "options.batch_size: 1,024 is over the lab's limit of 512"),
    ({"arch": SEED, "epochs": 0}, "epochs", "epochs: expected 1 to 20, got 0"),
    ({"arch": SEED, "epochs": 21}, "epochs", "epochs: expected 1 to 20, got 21"),
    ({"arch": SEED, "epochs": "2"}, "epochs", "epochs: expected a whole number, got '2'"),
    ({"arch": SEED}, "epochs", "epochs: expected a whole number, got None"),
    ({"arch": SEED, "epochs": 1, "max_steps": -1}, "max_steps",
     "max_steps: expected 0 (every step) or more, got -1"),
    ({"arch": SEED, "epochs": 1, "workers": 8}, "workers", "workers: unknown field"),
])
def test_a_job_the_lab_cannot_take_is_refused_before_it_starts(lab_server, body, field,
                                                                message):
    url, the_lab = lab_server
    before = sorted(p.name for p in the_lab.runs_dir.iterdir())
    status, answer = call(url, "POST", "/api/train", body)
    assert status == 400 and answer["field"] == field, answer
    assert answer["error"] == message or answer["error"].startswith(message), answer
    assert sorted(p.name for p in the_lab.runs_dir.iterdir()) == before


def test_a_job_that_diverges_says_so_and_the_server_stays_up(lab_server):
    url, _ = lab_server
    status, job = call(url, "POST", "/api/train", {
        "arch": "c4 p v8", "epochs": 2, "options": {"lr": 1e30, "momentum": 0.0}})
    assert status == 202, job
    job = until_ended(url, job["id"])
    assert job["state"] == "failed"
    assert job["error"].startswith("non-finite training loss") and "\n" not in job["error"]
    assert call(url, "POST", "/api/architecture", {"arch": SEED})[0] == 200


def test_activations_show_each_block_of_a_committed_run(lab_server, mnist_test_digits):
    url, the_lab = lab_server
    if "default" not in the_lab.run_dirs():
        pytest.skip("the committed runs are not here")
    images, labels = mnist_test_digits
    buffer = io.BytesIO()
    Image.fromarray(images[0]).save(buffer, format="PNG")
    status, answer = call(url, "POST", "/api/activations?run=default", buffer.getvalue(),
                          raw=True)
    assert status == 200, answer
    assert answer["digit"] == labels[0] and answer["finished"]
    assert [b["token"] for b in answer["blocks"]] == "c8 c16 c16 v16 v16 v16 v16".split()
    for block in answer["blocks"]:
        tiles = np.asarray(block["tiles"])
        h, w, c = block["output"]
        assert tiles.shape == (c, h, w) and tiles.min() >= 0 and tiles.max() <= 255
    status, answer = call(url, "POST", "/api/activations?run=nope", buffer.getvalue(), raw=True)
    assert status == 400 and answer["error"].startswith("run: no run 'nope' here")
    status, answer = call(url, "POST", "/api/activations?run=default", b"not a png", raw=True)
    assert status == 400 and answer["field"] == "image"


def test_the_basics_rows_load_into_the_lab(lab_server):
    url, _ = lab_server
    status, answer = call(url, "GET", "/api/basics")
    assert status == 200 and answer["epochs"] == configs.BASICS_EPOCHS
    rows = {r["name"]: r for r in answer["rows"]}
    assert list(rows) == list(configs.BASICS)
    assert rows["as-is"]["field"] == 24 and rows["no-pool"]["field"] == 15
    assert rows["dense-head"]["params"] == 12_088 - 160 + 5_760
    for row in rows.values():  # each row's request is one the lab takes as it is
        request = {k: v for k, v in row["request"].items() if k != "epochs"}
        status, table = call(url, "POST", "/api/architecture", request)
        assert status == 200 and table["totals"]["params"] == row["params"], row


# --- slow: a real server, real MNIST, a real browser --------------------------------------

@pytest.mark.slow
def test_a_server_killed_mid_job_leaves_a_run_that_says_it_is_unfinished_and_resumes(
        tmp_path, mnist_dir):
    runs = tmp_path / "runs"
    proc = serve_process("--backprop-only", "--runs", str(runs), "--data-dir", str(mnist_dir))
    try:
        url = served_url(proc).rstrip("/").rsplit("/", 1)[0]
        status, job = call(url, "POST", "/api/train",
                           {"arch": "c4 p v8", "epochs": 3, "max_steps": 40})
        assert status == 202, job
        run = runs / job["id"]
        deadline = time.monotonic() + 300
        while not (run / "checkpoints" / "1").is_dir():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    done, epochs = rundir.progress(run)
    assert epochs == 3 and 1 <= done < 3
    digit = REPO / "experiments/digits/mnist-test-41-label2-dark-on-light.png"
    r = subprocess.run([sys.executable, "-m", "jaxmnist.predict", "--run", str(run), str(digit)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        f"python -m jaxmnist.predict: warning: {run} is unfinished: its newest checkpoint is "
        f"epoch {done} of 3 (python -m jaxmnist.train --out {runs} --name {job['id']} --resume "
        "continues it)"]
    r = subprocess.run([sys.executable, "-m", "jaxmnist.train", "--out", str(runs), "--name",
                        job["id"], "--resume", "--no-progress", "--data-dir", str(mnist_dir)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert rundir.progress(run) == (3, 3)
    assert [m["epoch"] for m in rundir.read_metrics(run)] == [1, 2, 3]


@pytest.mark.slow
def test_the_lab_page_types_trains_and_looks_inside(tmp_path, mnist_dir):
    driver = browser()
    driver.set_window_size(1280, 1500)
    proc = serve_process("--backprop-only", "--runs", str(tmp_path / "runs"), "--data-dir",
                         str(mnist_dir))
    try:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        driver.get(served_url(proc).rstrip("/").rsplit("/", 1)[0] + "/architecture")
        wait = WebDriverWait(driver, 120)
        find = driver.find_element
        wait.until(lambda d: find(By.ID, "layers").get_attribute("data-params") == "12088")
        assert find(By.ID, "field").get_attribute("data-field") == "24"  # the last block's
        assert "24×24" in find(By.ID, "layers").text
        box = find(By.ID, "arch")
        box.clear()
        box.send_keys("c8 p v8 v8 q")
        wait.until(lambda d: "unknown layer 'q'" in find(By.ID, "arch-error").text)
        box.send_keys("\b\b")  # "c8 p v8 v8": 28 -> 14 -> 12 -> 10
        wait.until(lambda d: find(By.ID, "arch-error").text == "")
        wait.until(lambda d: find(By.ID, "layers").get_attribute("data-params") == str(
            lab.describe({"arch": "c8 p v8 v8"})["totals"]["params"]))
        steps = find(By.ID, "max-steps")  # (the committed screenshot: a whole epoch, 0)
        steps.clear()
        steps.send_keys(os.environ.get("JAXMNIST_LAB_STEPS", "60"))
        find(By.ID, "train").click()
        wait.until(lambda d: find(By.ID, "job-status").get_attribute("data-state") == "done")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#epochs-table tbody tr")) == 1
        wait.until(lambda d: "lab-1" in find(By.ID, "run").get_attribute("value"))
        draw(driver, find(By.ID, "pad"), SEVEN)
        wait.until(lambda d: find(By.ID, "tiles").get_attribute("data-blocks") == "3")
        assert find(By.ID, "digit").get_attribute("data-value") is not None
        screenshot = tmp_path / "architecture.png"
        driver.save_screenshot(str(screenshot))
        if os.environ.get("JAXMNIST_LAB_SCREENSHOT"):
            shutil.copy(screenshot, os.environ["JAXMNIST_LAB_SCREENSHOT"])
    finally:
        driver.quit()
        log = stop(proc)
    assert '"POST /api/train" 202 lab-1' in log, log
