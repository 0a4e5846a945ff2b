"""HTTP API latency: `mmkb serve` in a subprocess, each request type timed end to end with warm models.

    python benchmarks/api_latency.py [--repeats 7] [--wait-policy PASSIVE ACTIVE]

The server runs once per OpenMP wait policy (mmkb's default is PASSIVE; see the README's HTTP API
section); the starter KB must be ingested and indexed in MMKB_HOME (`mmkb demo` does it).
Writes benchmarks/results/api_latency.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ROOT / "index" / "worldkb" / "queries" / "flags"
CAPITAL = "What is the capital of this country?"
REQUESTS = {  # name → (route, form fields, files)
    "/v1/vqa, Georgia's flag (retrieves)": ("/v1/vqa", {"question": CAPITAL}, FLAGS / "ge.png"),
    "/v1/vqa, Brazil's flag (from memory)": ("/v1/vqa", {"question": CAPITAL}, FLAGS / "br.png"),
    "/v1/search, image": ("/v1/search", {"k": "5"}, FLAGS / "jp.png"),
    "/v1/tags, an emoji drawing": ("/v1/tags", {"top": "5"}, FLAGS.parent / "emoji" / "1F60D.png"),
    "/v1/generate, one named entity, fast": ("/v1/generate", {"prompt": "the flag of Tuvalu on a green background",
                                                               "fast": "true"}, None),
    "/v1/generate, two named entities, n=2, fast": ("/v1/generate", {
        "prompt": "the Japanese flag on the left and the grinning face emoji on the right on a yellow background",
        "n": "2", "fast": "true"}, None),
    "/v1/generate, one named entity, 50 steps": ("/v1/generate", {"prompt": "the flag of Tuvalu on a green background"},
                                                 None),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(client: httpx.Client, route: str, data: dict, image: Path | None) -> float:
    files = {"image": (image.name, image.read_bytes(), "image/png")} if image else None
    t = time.perf_counter()
    r = client.post(route, data=data, files=files)
    elapsed = 1000 * (time.perf_counter() - t)
    r.raise_for_status()
    return elapsed


def measure(policy: str, repeats: int) -> dict:
    port = free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    server = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            for _ in range(120):
                try:
                    client.get("/health").raise_for_status()
                    break
                except httpx.HTTPError:
                    time.sleep(0.5)
            out = {}
            for name, (route, data, image) in REQUESTS.items():
                for _ in range(2):  # loads the models, warms the caches
                    post(client, route, data, image)
                ms = [post(client, route, data, image) for _ in range(repeats)]
                out[name] = {"p50_ms": round(statistics.median(ms), 1), "min_ms": round(min(ms), 1),
                             "max_ms": round(max(ms), 1)}
                print(policy, name, out[name], flush=True)
            return out
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--wait-policy", nargs="+", default=["PASSIVE", "ACTIVE"], choices=["PASSIVE", "ACTIVE"])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    report = {"command": ("python benchmarks/api_latency.py " + " ".join(sys.argv[1:])).strip(),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average at start {os.getloadavg()}",
              "results": {p: measure(p, args.repeats) for p in args.wait_policy}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "api_latency.json").write_text(json.dumps(report, indent=1) + "\n")
    policies = list(report["results"])
    lines = ["# HTTP API latency (`mmkb serve`)", "", f"`{report['command']}` · {report['machine']}", "",
             "End to end over HTTP on 127.0.0.1, warm models; p50 (min–max) of the repeats.", "",
             "| request | " + " | ".join(f"OMP_WAIT_POLICY={p}" for p in policies) + " |",
             "|---|" + "---|" * len(policies)]
    for name in REQUESTS:
        cells = [report["results"][p][name] for p in policies]
        lines.append(f"| {name} | " + " | ".join(f"{c['p50_ms']:.0f} ms ({c['min_ms']:.0f}–{c['max_ms']:.0f})"
                                                  for c in cells) + " |")
    (args.out / "api_latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
