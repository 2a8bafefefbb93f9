"""`swcm serve` under load: sentences per second and p50/p95 latency at 1, 8 and 32 concurrent
clients, the server batching requests (its defaults) against the same requests decoded one at a
time (--batch-size 1).

Each client sends one sentence per request (POST /translate, JSON), one request after another on
its own keep-alive connection, over loopback; every setting sends the same sentences. The server
runs in its own process (`swcm serve MODEL --port 0`), the clients in this one: on a small machine
they share its cores, as a local client would. Prints the CPU (`lscpu`) and the load average, and
appends the figures to benchmarks/records/serve.jsonl (`swcm.records`).

    python benchmarks/serve.py swcm-demo/runs/ws-x2-daemt-nall-s0-adapted/finetune/best \
        [--sentences swcm-demo/data/mt/test.ug.jsonl] [--target ug] [--requests 256] [--clients 1 8 32]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def read_sentences(path: str | None) -> list[str]:
    """Source sentences: the "src" field of a task JSONL, else UDHR's Chinese (vendored with swcm)."""
    if path:
        texts = [json.loads(line)["src"] for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        from swcm.resources import udhr

        texts = [unit["text"]["zh"] for unit in udhr("train")]
    return [t for t in texts if t.strip()]


def start_server(model: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "swcm.cli", "serve", model, "--port", "0", *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    found = re.search(r"http://([\d.]+):(\d+)", line)
    if not found:
        process.kill()
        raise SystemExit(f"swcm serve did not start: {line!r}")
    return process, found.group(0)


def run_clients(url: str, sentences: list[str], target: str, clients: int, requests: int) -> dict:
    """`requests` one-sentence requests from `clients` threads; sentences/s and latency percentiles."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client():
        connection = http.client.HTTPConnection(host, int(port), timeout=600)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            body = json.dumps({"q": sentences[i % len(sentences)], "source": "zh", "target": target})
            start = time.perf_counter()
            connection.request("POST", "/translate", body, {"Content-Type": "application/json"})
            reply = connection.getresponse()
            data = reply.read()
            elapsed = time.perf_counter() - start
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}: {data[:200]!r}")
            with lock:
                latencies.append(elapsed)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    latencies.sort()
    return {"sentences_per_s": round(requests / wall, 2),
            "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p95_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 1)}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        found = re.search(r"Model name:\s*(.+)", out)
        if found:
            return found.group(1).strip()
    except OSError:
        pass
    from swcm.precision import cpu_name

    return cpu_name()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model directory (the demo's: swcm-demo/runs/<ws run>/finetune/best)")
    parser.add_argument("--sentences", help="task JSONL whose src fields are sent (default: UDHR's Chinese)")
    parser.add_argument("--target", default="ug")
    parser.add_argument("--requests", type=int, default=256, help="requests per setting (default 256)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/records/serve.jsonl")
    args = parser.parse_args()

    sentences = read_sentences(args.sentences)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); load average before: "
          + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    print(f"model: {args.model}; {len(sentences)} sentences, zh → {args.target}; {args.requests} requests per setting")
    modes = {"batched": [], "one at a time": ["--batch-size", "1", "--max-wait-ms", "0"]}
    results: dict[str, dict[int, dict]] = {}
    for mode, extra in modes.items():
        process, url = start_server(args.model, extra)
        try:
            run_clients(url, sentences, args.target, 4, 16)  # warm-up
            results[mode] = {}
            for clients in args.clients:
                results[mode][clients] = run_clients(url, sentences, args.target, clients, args.requests)
                r = results[mode][clients]
                print(f"{mode:>13}, {clients:>2} clients: {r['sentences_per_s']:7.1f} sentences/s, "
                      f"p50 {r['p50_ms']:7.1f} ms, p95 {r['p95_ms']:7.1f} ms", flush=True)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
    print("\n| clients | batched sentences/s | p50 / p95 ms | one at a time sentences/s | p50 / p95 ms | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    figures = {"model": str(args.model), "target": args.target, "requests": args.requests, "levels": {}}
    for clients in args.clients:
        b, o = results["batched"][clients], results["one at a time"][clients]
        speedup = b["sentences_per_s"] / o["sentences_per_s"]
        print(f"| {clients} | {b['sentences_per_s']:.1f} | {b['p50_ms']:.0f} / {b['p95_ms']:.0f} | "
              f"{o['sentences_per_s']:.1f} | {o['p50_ms']:.0f} / {o['p95_ms']:.0f} | {speedup:.1f}× |")
        figures["levels"][str(clients)] = {"batched": b, "one_at_a_time": o, "speedup": round(speedup, 2)}
    load = os.getloadavg()
    print("load average after: " + ", ".join(f"{x:.1f}" for x in load))
    figures["load_average_after"] = [round(x, 2) for x in load]
    figures["cpu_lscpu"] = cpu_model()
    if not args.no_record:
        from swcm.records import append_record

        path = append_record("serve", figures, precision="fp32")
        if path:
            print(f"appended to {path}")


if __name__ == "__main__":
    main()
