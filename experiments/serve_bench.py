"""Latency of `POST /api/predict` for a 280x280 PNG, one request at a time.

    python experiments/serve_bench.py [--run experiments/results/default] [--requests 200]

Starts `jaxmnist.serve` in this process (model compiled at start-up, as the CLI does),
sends the same 280x280 PNG of a committed digit (experiments/digits/) `--requests`
times over HTTP on loopback after 5 warm-up requests, and writes the median, 90th and
99th percentile round-trip times to experiments/results/serve/latency.json.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    from jaxmnist import serve

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=str(REPO / "experiments/results/default"))
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--out", type=Path, default=REPO / "experiments/results/serve/latency.json")
    args = p.parse_args()

    digit = REPO / "experiments/digits/mnist-test-41-label2-dark-on-light.png"
    buffer = io.BytesIO()
    Image.open(digit).convert("L").resize((280, 280)).save(buffer, format="PNG")
    body = buffer.getvalue()

    t0 = time.perf_counter()
    httpd = serve.make_server(args.run, "127.0.0.1", 0)
    startup_s = time.perf_counter() - t0
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/api/predict"

    def request() -> tuple[float, dict]:
        t = time.perf_counter()
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=60) as r:
            result = json.loads(r.read())
        return 1000 * (time.perf_counter() - t), result

    for _ in range(5):
        request()
    times, server_ms = [], []
    for _ in range(args.requests):
        ms, result = request()
        times.append(ms)
        server_ms.append(result["ms"])
    httpd.shutdown()
    times.sort()
    summary = {
        "png": f"280x280, {len(body):,} bytes ({digit.name}, resized)",
        "digit": result["digit"],
        "requests": args.requests,
        "median_ms": round(statistics.median(times), 2),
        "p90_ms": round(times[int(0.9 * len(times)) - 1], 2),
        "p99_ms": round(times[int(0.99 * len(times)) - 1], 2),
        "server_median_ms": round(statistics.median(server_ms), 2),
        "startup_s": round(startup_s, 2),
        "run": args.run,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(summary, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
