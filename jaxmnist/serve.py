"""Draw a digit and watch a trained run read it: `python -m jaxmnist.serve --run DIR`.

Serves a page (a canvas to draw on with mouse, pen or finger, the top 3 classes with
probability bars, the 28x28 image the model sees, a file picker) and a JSON API:

    POST /api/predict   body: an image file's bytes (any format Pillow reads)
      200 {"digit": d, "probabilities": [10 floats], "top3": [[d, p], ...],
           "input": 28 rows of 28 floats in [0, 1] (the model's input), "ms": ...}
      400 {"error": "one line"}  (not an image, empty, blank, over the size limits)
    GET  /api/info      the run: name, arch, parameters, final accuracy

and Part A's lesson at /backprop (`--backprop-only`: that page alone, no trained run
needed), the worked example live, every number from `jaxmnist.lesson`:

    POST /api/backprop  body: a JSON object (see jaxmnist.lesson; {} is the seed's example)
      200 {"curves", "final", "network", "worked", "text", ...}
      400 {"error": "one line", "field": the field at fault or null}

and Part B's architecture lab at /architecture (`jaxmnist.lab`; no trained run needed
either): a net typed as a layer string, its table, trained live in this server (one job
at a time, into `--runs`, default runs/lab), and what its layers make of a drawn digit:

    POST   /api/architecture   {"arch", "recipe"?, "options"?}  the layer table
      200 {"arch", "rows": [{"name", "token", "output", "params", "field", "jump",
           "madds", "sees", "centre"}], "totals", "whole_image", "limits", "over_limit"}
      400 {"error": "arch: 'p' (layer 6) pools a 1x1 map ...", "field": "arch"}
    POST   /api/train          {"arch", "epochs", "recipe"?, "max_steps"?, "options"?}
      202 the job (below); 409 {"error": "job lab-3 is running ...", "job"} while one
      runs; 400 {"error", "field"} for a bad field or a net over the lab's limits
    GET    /api/train/ID       the job: {"id", "state" (running, cancelling, done,
           cancelled, failed), "arch", "epochs", "epoch", "step", "steps", "metrics"
           (metrics.jsonl so far), "error", "run", "run_dir", "resume", "seconds"}
    DELETE /api/train/ID       cancel: the job stops at its next step
    GET    /api/runs           the runs it knows: the committed recipes', the served
           run, the lab's own; each {"name", "arch", "epochs", "complete", "finished",
           "running", "accuracy"}
    POST   /api/activations?run=NAME   body: an image file's bytes
      200 {"run", "digit", "probabilities", "finished", "epoch", "blocks": [{"name",
           "token", "output", "field", "centre", "tiles": C tiles of H rows of W bytes}]}
    GET    /api/basics         the basics study's rows (`lab.basics`), each with the
           request that loads it into the lab

The server is the standard library's `http.server` (a thread per request): the pages
are a few small static files and the API a handful of routes, so a web framework would
add a dependency and nothing else. The model is compiled once at start-up; every asset
is served from the package, so the pages work offline. One log line per request.
"""

from __future__ import annotations

import json
import sys
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import numpy as np

from jaxmnist import configs, lab, lesson, predict
from jaxmnist.cli import ArgumentParser, fail, log_to_stderr, quiet_libraries, report
from jaxmnist.configs import Config
from jaxmnist.models import count_params

MAX_BYTES = 5 * 1024 * 1024  # image bodies over 5 MiB are refused
MAX_LESSON_BYTES = 64 * 1024  # and JSON requests over 64 KiB (a full one is < 1 KiB)
DRAIN_BYTES = 64 * 1024 * 1024  # larger ones are not even read: the connection is closed
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8"),
          "/backprop": ("backprop.html", "text/html; charset=utf-8"),
          "/backprop.js": ("backprop.js", "text/javascript; charset=utf-8"),
          "/architecture": ("architecture.html", "text/html; charset=utf-8"),
          "/lab.js": ("lab.js", "text/javascript; charset=utf-8")}
NO_RUN = ("no trained run is served here (--backprop-only); the lessons are at /backprop "
          "and /architecture")
# The committed runs, where this is a checkout of the project (not an installed wheel).
RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results"


def committed_runs() -> dict[str, Path]:
    """The committed recipes' runs that hold a checkpoint, by recipe name."""
    return {name: RESULTS / name for name in lab.RECIPES
            if (RESULTS / name / "checkpoints").is_dir()}


def run_info(run_dir: Path, num_params: int) -> dict:
    """What the page shows about the run: name, arch, parameters, final-epoch accuracy."""
    config = Config.from_dict(json.loads((run_dir / "config.json").read_text()))
    info = {"run": run_dir.resolve().name, "arch": config.arch, "params": num_params}
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        if lines:
            last = lines[-1]
            key = next((k for k in ("test_accuracy", "val_accuracy") if k in last), None)
            info.update(epoch=last["epoch"], accuracy=last.get(key), accuracy_on=key)
    return info


class Handler(BaseHTTPRequestHandler):
    """The pages, their assets, and the APIs; set `classify` and `info` first (None for
    the lesson alone)."""

    classify: predict.Classifier | None
    info: dict | None
    lab: lab.Lab
    server_version = "jaxmnist"

    def do_GET(self):  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path == "/api/runs":
            return self._json(HTTPStatus.OK, {"runs": self.lab.runs()})
        if path == "/api/basics":
            return self._json(HTTPStatus.OK, {
                "rows": lab.basics(RESULTS if RESULTS.is_dir() else None),
                "epochs": configs.BASICS_EPOCHS})
        if path.startswith("/api/train/"):
            return self._job(path.removeprefix("/api/train/"), cancel=False)
        if path == "/api/info":
            if self.info is None:
                return self._json(HTTPStatus.NOT_FOUND, {"error": NO_RUN})
            return self._json(HTTPStatus.OK, self.info)
        if path == "/" and self.classify is None:
            path = "/backprop"
        if path not in STATIC:
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {path}"})
        name, content_type = STATIC[path]
        body = resources.files("jaxmnist").joinpath("static", name).read_bytes()
        self._send(HTTPStatus.OK, body, content_type)

    def do_DELETE(self):  # noqa: N802
        path = self.path.split("?", 1)[0]
        if not path.startswith("/api/train/"):
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {self.path}"})
        return self._job(path.removeprefix("/api/train/"), cancel=True)

    def do_POST(self):  # noqa: N802
        path, _, query = self.path.partition("?")
        if path == "/api/backprop":
            return self._lesson()
        if path == "/api/architecture":
            return self._lab_request(lab.describe, HTTPStatus.OK)
        if path == "/api/train":
            return self._lab_request(lambda r: self.lab.submit(r).snapshot(),
                                     HTTPStatus.ACCEPTED)
        if path == "/api/activations":
            return self._activations(query)
        if path != "/api/predict":
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {self.path}"})
        if self.classify is None:
            return self._json(HTTPStatus.NOT_FOUND, {"error": NO_RUN})
        t0 = time.perf_counter()
        body = self._body(MAX_BYTES, "send the image file's bytes as the body")
        if body is None:
            return
        try:
            image = predict.decode_image(body)
        except predict.ImageError as e:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        probabilities = self.classify(image)
        top = np.argsort(probabilities)[::-1][:3]
        self._json(HTTPStatus.OK, {
            "digit": int(top[0]),
            "probabilities": [round(float(p), 6) for p in probabilities],
            "top3": [[int(d), round(float(probabilities[d]), 6)] for d in top],
            "input": np.round(image, 3).tolist(),
            "ms": round(1000 * (time.perf_counter() - t0), 1),
        })

    def _json_body(self):
        """The request's JSON body ({} if empty), or None once a 400 has answered."""
        body = self._body(MAX_LESSON_BYTES, "send a JSON object as the body")
        if body is None:
            return None
        try:
            return json.loads(body or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"the body is not JSON ({e})",
                                                "field": None})
            return None

    def _lab_request(self, answer, status: HTTPStatus):
        request = self._json_body()
        if request is None:
            return
        try:
            result = answer(request)
        except lab.LabError as e:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(e), "field": e.field})
        except lab.Busy as e:
            return self._json(HTTPStatus.CONFLICT, {"error": str(e), "job": e.job})
        self.result = result.get("id", result.get("arch", ""))
        self._send(status, json.dumps(result).encode(), "application/json")

    def _job(self, job_id: str, cancel: bool):
        try:
            job = self.lab.cancel(job_id) if cancel else self.lab.job(job_id)
        except KeyError as e:
            return self._json(HTTPStatus.NOT_FOUND, {"error": e.args[0]})
        snapshot = job.snapshot()
        self.result = f"{snapshot['state']} epoch {snapshot['epoch']} step {snapshot['step']}"
        self._send(HTTPStatus.OK, json.dumps(snapshot).encode(), "application/json")

    def _activations(self, query: str):
        from urllib.parse import parse_qs

        run = parse_qs(query).get("run", [None])[0]
        body = self._body(MAX_BYTES, "send the image file's bytes as the body")
        if body is None:
            return
        if not run:
            return self._json(HTTPStatus.BAD_REQUEST, {
                "error": "run: name the run in the query (?run=NAME)", "field": "run"})
        try:
            result = self.lab.activations(run, predict.decode_image(body))
        except predict.ImageError as e:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(e), "field": "image"})
        except lab.LabError as e:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(e), "field": e.field})
        self.result = f"{run}: {result['digit']}"
        self._send(HTTPStatus.OK, json.dumps(result).encode(), "application/json")

    def _lesson(self):
        request = self._json_body()
        if request is None:
            return
        try:
            answer = lesson.lesson(request)
        except lesson.LessonError as e:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(e), "field": e.field})
        self.result = f"lr_index {answer['request']['lr_index']}, step {answer['request']['step']}"
        self._send(HTTPStatus.OK, json.dumps(answer).encode(), "application/json")

    def _body(self, limit: int, what: str) -> bytes | None:
        """The request's body, or None once a 400 has answered one that is missing its
        length or over `limit` bytes."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"{what}, with a Content-Length"},
                       close=True)
            return None
        if length > limit:
            if length <= DRAIN_BYTES:  # read and dropped, so the client hears the answer
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(1 << 20, remaining))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            self._json(HTTPStatus.BAD_REQUEST, {
                "error": f"{length:,} bytes is over the {limit:,}-byte limit"}, close=True)
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _json(self, status: HTTPStatus, payload: dict, close: bool = False) -> None:
        self.result = payload.get("digit", payload.get("error", ""))
        self._send(status, json.dumps(payload).encode(), "application/json", close)

    def _send(self, status, body: bytes, content_type: str, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code="-", size="-"):
        # One line per request: client, method, path, status, and the digit or the error.
        line = (f'{self.log_date_time_string()} {self.address_string()} '
                f'"{self.command} {self.path}" {int(code)} {getattr(self, "result", "")}')
        print(line.rstrip(), file=sys.stderr, flush=True)


def make_server(run_dir: str | Path | None, host: str = "127.0.0.1", port: int = 8000, *,
                runs_dir: str | Path = "runs/lab", data_dir=None, tfds_dir=None,
                splits=None):
    """A ready server (model loaded and compiled; the lesson compiled) for `run_dir`, or
    for the lessons alone if it is None; call serve_forever(). The lab trains into
    `runs_dir`, on MNIST from `data_dir` / `tfds_dir` (`data.load_mnist`; read at its
    first job) or `splits` (train, test)."""
    classify = info = None
    known = committed_runs()
    if run_dir is not None:
        run_dir = Path(run_dir)
        classify = predict.Classifier.from_run(run_dir)
        info = run_info(run_dir, count_params(classify.variables["params"]))
        known.setdefault(info["run"], run_dir)
    lesson.lesson({})  # compiles the runs once, so that no request waits for it
    the_lab = lab.Lab(runs_dir, known, data_dir, tfds_dir, splits)
    handler = type("RunHandler", (Handler,), {"classify": classify, "info": info,
                                              "lab": the_lab})
    return ThreadingHTTPServer((host, port), handler)


def main(argv=None) -> int:
    prog = "python -m jaxmnist.serve"
    quiet_libraries()
    log_to_stderr(prog)  # a checkpoint that cannot be read, and the one used instead
    p = ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--run", default="experiments/results/default",
                   help="a training run directory (default experiments/results/default)")
    p.add_argument("--backprop-only", action="store_true",
                   help="serve Part A's lesson alone (/backprop), no trained run needed")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    p.add_argument("--runs", default="runs/lab",
                   help="where the architecture lab writes its runs (default runs/lab)")
    p.add_argument("--data-dir", help="MNIST's four IDX .gz files, for the lab (default "
                   "$JAXMNIST_DATA_DIR; unset: TFDS downloads MNIST)")
    p.add_argument("--tfds-dir", help="TFDS data dir (default TFDS's own)")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be in 0-65535, got {args.port}")
    try:
        server = make_server(None if args.backprop_only else args.run, args.host, args.port,
                             runs_dir=args.runs, data_dir=args.data_dir,
                             tfds_dir=args.tfds_dir)
    except ValueError as e:  # not a trained run directory
        return report(prog, e)
    except OSError as e:  # address in use, unknown host, no permission
        fail(prog, f"cannot listen on {args.host}:{args.port} ({e.strerror or e})")
    host, port = server.server_address[:2]
    info = server.RequestHandlerClass.info
    what = f"{info['run']} on http://{host}:{port}/ and" if info else "the lessons on"
    print(f"serving {what} http://{host}:{port}/backprop and /architecture (Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
