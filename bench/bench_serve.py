"""`agegender serve` under load: K concurrent clients, real photos, a bad upload every tenth request.

    TF_CPP_MIN_LOG_LEVEL=3 python bench/bench_serve.py --requests 1000 --clients 4 \\
        [--photos ../shared/photos] [--megapixels 1.0] [--workers 1] [--model NAME_OR_PATH] \\
        [--max-seconds 900] [--out bench/bench_serve.json]

Starts ``agegender serve`` (the shipped model unless ``--model``; its default detector; ``--workers``) on a free
127.0.0.1 port in its own process and waits for ``/healthz``. The photos of ``--photos`` are
read once, turned upright and resized (up or down, Lanczos) to about ``--megapixels`` each, and
sent as JPEG (quality 90) from memory, one photo per request, by ``--clients`` threads that each
keep one HTTP connection open. Every tenth request (9, 19, ...) is a bad upload instead, in turn:
a text file, a truncated JPEG, a PNG whose header claims 9000 x 9000 pixels (a decompression
bomb) and an 11 MB file (over the 10 MB per-file limit). A good request counts as failed unless it
answers 200; a bad one unless it answers 4xx with a reason.

The run is bounded in count (``--requests``, after ``--warmup`` uncounted ones: by default one
per photo, so that RSS "after warm-up" is taken once the server has seen every photo size) and in
time (``--max-seconds``: the clients stop taking new requests then; each request has a 120 s
timeout), and then the server is stopped. Reports requests/s, latency percentiles (good requests; bad ones
apart), failures, faces found, and the server's RSS (its process and any children, from /proc)
after start-up, after the warm-up and at the end. Prints Markdown and writes ``--out`` (JSON).

``--compare-threads N`` measures instead, in this process, why the server runs the model in one
thread: the same photos predicted one after another, then from N threads at once (each with its
own detector, sharing the model).
"""

from __future__ import annotations

import argparse
import http.client
import io
import itertools
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
from _common import cpu_name  # bench/ is the script's folder
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BOUNDARY = "benchserveboundary"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# --------------------------------------------------------------------------------------------------
# inputs


def load_photos(folder: Path, megapixels: float) -> list[tuple[str, bytes]]:
    """Every photo of ``folder`` upright, resized to about ``megapixels``, as JPEG bytes."""
    photos = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
        scale = (megapixels * 1e6 / (image.width * image.height)) ** 0.5
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        photos.append((path.stem + ".jpg", buffer.getvalue()))
    if not photos:
        raise SystemExit(f"no photos in {folder}")
    return photos


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def bad_uploads(photo: bytes) -> list[tuple[str, str, bytes]]:
    """(kind, file name, bytes) of the bad uploads mixed in."""
    rng = np.random.default_rng(0)
    return [
        ("not an image", "notes.txt", b"this is not a picture\n" * 20),
        ("truncated JPEG", "cut.jpg", photo[: len(photo) // 3]),
        ("decompression bomb", "bomb.png", _png_header(9000, 9000)),
        ("oversize (11 MB)", "big.jpg", rng.integers(0, 256, 11_000_000, dtype=np.uint8).tobytes()),
    ]


def multipart(name: str, data: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


# --------------------------------------------------------------------------------------------------
# the server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants (MB), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def start_server(args, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "agegender.cli", "serve", "--port", str(port),
               "--workers", str(args.workers)]
    if args.model:
        command += ["--model", args.model]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}: {process.stderr.read()}")
        try:
            status, _ = request(port, "GET", "/healthz", None, timeout=5)
            if status == 200:
                return process
        except OSError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit("the server did not answer /healthz within 300 s")


def request(port: int, method: str, path: str, body: bytes | None, *, timeout: float = 120,
            connection: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    own = connection is None
    connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"} if body else {}
        connection.request(method, path, body, headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        if own:
            connection.close()


# --------------------------------------------------------------------------------------------------
# the clients


def run_clients(port: int, jobs: list[tuple[str, str, str, bytes]], clients: int,
                max_seconds: float) -> tuple[list[dict], float]:
    """Send every job (kind, expected "good"/"bad", file name, bytes) from ``clients`` threads;
    returns one record per request sent and the wall time."""
    counter = itertools.count()
    lock = threading.Lock()
    records: list[dict] = []
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.monotonic() < deadline:
            with lock:
                index = next(counter)
            if index >= len(jobs):
                break
            kind, expect, name, data = jobs[index]
            started = time.perf_counter()
            record = {"index": index, "kind": kind, "expect": expect}
            try:
                status, body = request(port, "POST", "/v1/predict", multipart(name, data),
                                       connection=connection)
                record["status"] = status
                answer = json.loads(body)
                record["faces"] = len(answer.get("predictions", []))
                record["reasons"] = [e["reason"] for e in answer.get("errors", [])]
            except (OSError, http.client.HTTPException, ValueError) as exc:
                record["status"], record["error"] = None, f"{type(exc).__name__}: {exc}"
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            record["seconds"] = time.perf_counter() - started
            with lock:
                records.append(record)
        connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max_seconds + 130)
    return records, time.perf_counter() - started


def failed(record: dict) -> bool:
    if record["expect"] == "good":
        return record["status"] != 200
    return not (record["status"] is not None and 400 <= record["status"] < 500 and record["reasons"])


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(records: list[dict], wall: float) -> dict:
    good = [r for r in records if r["expect"] == "good"]
    bad = [r for r in records if r["expect"] == "bad"]
    latency = [r["seconds"] for r in good]
    return {
        "requests": len(records), "good": len(good), "bad": len(bad), "wall_s": round(wall, 1),
        "requests_per_s": round(len(records) / wall, 2) if wall else None,
        "good_latency_s": {f"p{q}": round(percentile(latency, q), 3) for q in (50, 95, 99)}
        | {"mean": round(statistics.fmean(latency), 3) if latency else None,
           "max": round(max(latency), 3) if latency else None},
        "bad_latency_s": {"p50": round(percentile([r["seconds"] for r in bad], 50), 3)},
        "failed_good": [r for r in good if failed(r)],
        "failed_bad": [r for r in bad if failed(r)],
        "bad_statuses": {kind: sorted({r["status"] for r in bad if r["kind"] == kind}, key=str)
                         for kind in sorted({r["kind"] for r in bad})},
        "faces": sum(r.get("faces", 0) for r in good),
        "good_without_face": sum(1 for r in good if r.get("faces") == 0),
    }


# --------------------------------------------------------------------------------------------------


def compare_threads(args) -> dict:
    """The same photos through the Predictor one after another, then from N threads at once."""
    from agegender._tf import load_tensorflow

    load_tensorflow()
    from agegender_models import Predictor, load_model, load_pretrained

    photos = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
              for _, data in load_photos(Path(args.photos), args.megapixels)[: args.compare_photos]]
    model = load_pretrained() if not args.model else load_model(args.model)
    predictors = [Predictor(model, detector="mtcnn", runtime="keras") for _ in range(args.compare_threads)]
    for predictor in predictors:
        predictor.predict(photos[:1], return_errors=True)  # warm-up
    result = {"photos": len(photos), "threads": args.compare_threads, "rounds": []}
    for _ in range(args.compare_rounds):
        started, cpu = time.perf_counter(), time.process_time()
        for image in photos:
            predictors[0].predict([image], return_errors=True)
        serial = time.perf_counter() - started
        serial_cpu = (time.process_time() - cpu) / serial
        chunks = [photos[i :: len(predictors)] for i in range(len(predictors))]
        started, cpu = time.perf_counter(), time.process_time()
        threads = [threading.Thread(target=lambda p, xs: [p.predict([x], return_errors=True) for x in xs],
                                    args=(p, xs)) for p, xs in zip(predictors, chunks, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        parallel = time.perf_counter() - started
        result["rounds"].append({
            "one_thread_photos_per_s": round(len(photos) / serial, 2),
            "one_thread_cpu_per_wall": round(serial_cpu, 2),
            "n_threads_photos_per_s": round(len(photos) / parallel, 2),
            "n_threads_cpu_per_wall": round((time.process_time() - cpu) / parallel, 2),
        })
    result["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="counted requests (default 1000)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="uncounted requests first (default: one per photo, so that the "
                        "server has seen each photo's size once before RSS is measured)")
    parser.add_argument("--max-seconds", type=float, default=900,
                        help="stop taking new requests after this long (default 900)")
    parser.add_argument("--photos", default=str(ROOT.parent / "shared" / "photos"))
    parser.add_argument("--megapixels", type=float, default=1.0, help="each photo resized to this")
    parser.add_argument("--workers", type=int, default=1, help="agegender serve --workers")
    parser.add_argument("--model", default=None, help="agegender serve --model (default: shipped)")
    parser.add_argument("--out", default=str(HERE / "bench_serve.json"))
    parser.add_argument("--data-dir", default=None, help="accepted for `nox -s bench`; not used")
    parser.add_argument("--compare-threads", type=int, default=0, metavar="N",
                        help="instead: one inference thread against N, in this process")
    parser.add_argument("--compare-photos", type=int, default=16)
    parser.add_argument("--compare-rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.compare_threads:
        result = compare_threads(args)
        print(json.dumps(result, indent=2))
        return 0

    photos = load_photos(Path(args.photos), args.megapixels)
    bad = bad_uploads(photos[0][1])
    if args.warmup is None:
        args.warmup = len(photos)
    jobs = []
    for i in range(args.warmup + args.requests):
        if i >= args.warmup and (i - args.warmup) % 10 == 9:
            kind, name, data = bad[((i - args.warmup) // 10) % len(bad)]
            jobs.append((kind, "bad", name, data))
        else:
            name, data = photos[i % len(photos)]
            jobs.append(("photo", "good", name, data))
    sizes = [Image.open(io.BytesIO(d)).size for _, d in photos]
    port = free_port()
    load_before = os.getloadavg()
    started = time.perf_counter()
    server = start_server(args, port)
    startup_s = time.perf_counter() - started
    try:
        served = json.loads(request(port, "GET", "/v1/models", None)[1])["models"][0]
        rss_start = rss_mb(server.pid)
        warm, _ = run_clients(port, jobs[: args.warmup], args.clients, args.max_seconds)
        rss_warm = rss_mb(server.pid)
        series: list[tuple[float, float]] = []
        done = threading.Event()

        def sample() -> None:  # the server's RSS every 10 s: a plateau or a climb
            t0 = time.perf_counter()
            while not done.wait(10):
                series.append((round(time.perf_counter() - t0), round(rss_mb(server.pid))))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        records, wall = run_clients(port, jobs[args.warmup :], args.clients, args.max_seconds)
        done.set()
        rss_end = rss_mb(server.pid)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    summary = summarize(records, wall)
    result = {
        "command": "python bench/bench_serve.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpu": cpu_name(), "cores": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "clients": args.clients, "workers": args.workers, "model": served["name"],
        "runtime": served["runtime"], "detector": served["detector"],
        "photos": len(photos), "photo_sizes": f"{min(w * h for w, h in sizes) / 1e6:.2f}-"
        f"{max(w * h for w, h in sizes) / 1e6:.2f} MP",
        "startup_s": round(startup_s, 1), "warmup_requests": len(warm),
        "rss_mb": {"after_start": round(rss_start, 1), "after_warmup": round(rss_warm, 1),
                   "end": round(rss_end, 1), "growth_after_warmup": round(rss_end - rss_warm, 1),
                   "every_10_s": series},
        **summary,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return 0 if not summary["failed_good"] and not summary["failed_bad"] else 1


def markdown(r: dict) -> str:
    lat = r["good_latency_s"]
    rss = r["rss_mb"]
    lines = [
        f"`{r['command']}` — {r['cpu']}, {r['cores']} cores (load average before "
        f"{r['load_average_before'][0]}, after {r['load_average_after'][0]}); {r['model']} "
        f"({r['runtime']}, {r['detector']}), {r['workers']} worker(s), {r['clients']} clients, "
        f"{r['photos']} photos of {r['photo_sizes']}",
        "",
        "| requests (good + bad) | wall | requests/s | good p50 | p95 | p99 | max | failed good | "
        "failed bad | faces | RSS start / warm / end (growth) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {r['requests']} ({r['good']} + {r['bad']}) | {r['wall_s']} s | {r['requests_per_s']} | "
        f"{lat['p50']} s | {lat['p95']} s | {lat['p99']} s | {lat['max']} s | "
        f"{len(r['failed_good'])} | {len(r['failed_bad'])} | {r['faces']} "
        f"({r['good_without_face']} photos without) | {rss['after_start']:.0f} / "
        f"{rss['after_warmup']:.0f} / {rss['end']:.0f} MB ({rss['growth_after_warmup']:+.0f} MB) |",
        "",
        "bad uploads answered: " + ", ".join(f"{k} {v}" for k, v in r["bad_statuses"].items()),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
