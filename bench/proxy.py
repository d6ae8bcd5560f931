"""Benchmark the proxy against direct vLLM: added latency, throughput, tokens saved.

Against one real vLLM server (the CPU build here) on the embedded model:

1. latency and throughput at concurrency 1, 8 and 32: the same greedy completion
   request sent straight to vLLM and through loopd's proxy (recording on), in
   alternating blocks so drift hits both alike; added latency p50 / p99 and the
   throughput overhead (target <= 5%);
2. loop stopping: the embedded model's looping prompts streamed with
   ``loop_stopping = "off"`` and ``"stop"``; tokens generated and saved.

Run:  python bench/proxy.py                        # starts its own vLLM from .venv-vllm
      python bench/proxy.py --rounds 8 --json build/bench-proxy.json

The proxy runs in this process, as in the daemon. Two layouts of the machine's cores:

- ``own-core``: vLLM and the clients on core 0, the proxy alone on the others; both
  paths then get the same CPU for vLLM and clients, and the proxy's cost shows as what
  it adds, as on a production host where vLLM serves from a GPU box of its own;
- ``shared``: nothing pinned, vLLM's own binding; the proxy takes CPU from the vLLM
  front end and the clients, the cost of co-locating loopd with a CPU vLLM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from httpx_aiohttp import AiohttpTransport
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loopd.backends.vllm import VllmBackend  # noqa: E402
from loopd.backends.vllm.server import VllmServer  # noqa: E402
from loopd.config import LoopdConfig  # noqa: E402
from loopd.embedded import HELDOUT_FILE, TRAIN_FILE, EmbeddedSpec, ensure_embedded  # noqa: E402
from loopd.inputs import resolve_inputs  # noqa: E402
from loopd.loop import Loop  # noqa: E402
from loopd.metrics import Metrics  # noqa: E402
from loopd.proxy import ProxyServer  # noqa: E402
from loopd.store import Store  # noqa: E402
from loopd.types import GenerationRequest  # noqa: E402

SERVED = "base"
PROMPT = "doc: amber anchor candle river tiger text:"
LAYOUTS = ("own-core", "shared")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "build" / "bench-proxy")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--requests",
        type=int,
        default=64,
        help="per block, at least 16x concurrency: blocks of seconds, not a warm-up",
    )
    parser.add_argument("--rounds", type=int, default=6, help="ABBA rounds per concurrency")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--loop-prompts", type=int, default=12)
    parser.add_argument("--loop-max-tokens", type=int, default=256)
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    return parser.parse_args()


@contextmanager
def proxy_over(
    server: VllmServer, model: Path, embedded: Path, mode: str
) -> Iterator[tuple[Loop, str]]:
    """A Loop (store, deployer) and its proxy in this process, as the daemon runs them."""
    with tempfile.TemporaryDirectory() as state:
        cfg = LoopdConfig.model_validate(
            {
                "state_dir": state,
                "model": {"base": str(model)},
                "sampling": {"prompts": [str(embedded / TRAIN_FILE)]},
                "gate": {"heldout": str(embedded / HELDOUT_FILE)},
                "serving": {"backend": "vllm", "vllm": {"endpoints": [server.url],
                            "monitor_interval_s": 0, "max_concurrent_requests": 64}},
                "proxy": {"enabled": True, "port": 0, "loop_stopping": mode},
            }
        )  # fmt: skip
        backend = VllmBackend(cfg.serving.vllm, base_model_name=SERVED)
        loop = Loop(cfg, resolve_inputs(cfg), backend=backend, store=Store(cfg.db_path))
        proxy = ProxyServer(loop, Metrics(loop.store).registry)
        proxy.start()
        try:
            yield loop, proxy.url
        finally:
            proxy.stop()
            backend.close()


async def timed_requests(url: str, body: dict, count: int, concurrency: int) -> tuple[list, float]:
    """``count`` requests from ``concurrency`` workers: per-request seconds, wall seconds."""
    latencies: list[float] = []
    queue = list(range(count))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    transport = AiohttpTransport(limits=limits)  # a cheap load generator: aiohttp's pool
    async with httpx.AsyncClient(transport=transport, timeout=600) as client:

        async def worker() -> None:
            while queue:
                queue.pop()
                started = time.perf_counter()
                response = await client.post(url + "/v1/completions", json=body)
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


def run_block(url: str, body: dict, count: int, concurrency: int) -> tuple[list, float]:
    return asyncio.run(timed_requests(url, body, count, concurrency))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Measured:
    """What one path (direct or proxy) got in one ABBA round."""

    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall


def latency_levels(
    server: VllmServer, proxy_url: str, client_cpus: set[int], args: argparse.Namespace
) -> list[dict]:
    body = {"prompt": PROMPT, "max_tokens": args.max_tokens, "temperature": 0}
    paths = {"direct": (server.url, body | {"model": SERVED}),
             "proxy": (proxy_url, body | {"model": "loopd"})}  # fmt: skip
    rows = []
    # The clients run in a process of their own, as real clients would: in this one they
    # would share the interpreter lock with the proxy and slow it down.
    spawn = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(1, mp_context=spawn, initializer=os.sched_setaffinity,
                               initargs=(0, client_cpus))  # fmt: skip
    with Progress() as progress, pool as clients:
        task = progress.add_task("latency", total=len(args.concurrency) * 4 * args.rounds)
        for concurrency in args.concurrency:
            count = max(args.requests, 16 * concurrency)
            rounds = []
            # ABBA blocks, repeated: the CPU server's speed drifts a lot within a run
            for _ in range(args.rounds):
                got = {"direct": Measured(), "proxy": Measured()}
                for block in ("direct", "proxy", "proxy", "direct"):
                    url, path_body = paths[block]
                    cpu = time.process_time()  # this process: the proxy's threads only
                    latencies, wall = clients.submit(
                        run_block, url, path_body, count, concurrency
                    ).result()
                    got[block].latencies += latencies
                    got[block].wall += wall
                    got[block].cpu += time.process_time() - cpu
                    progress.advance(task)
                rounds.append(got)
            rows.append(level_row(concurrency, rounds))
    return rows


def level_row(concurrency: int, rounds: list[dict[str, Measured]]) -> dict:
    """Pooled figures, and the overhead's 95% interval over rounds (Student's t): the
    server's speed drifts between rounds, so one figure alone says little."""
    pooled = {
        path: Measured([x for r in rounds for x in r[path].latencies],
                    sum(r[path].wall for r in rounds), sum(r[path].cpu for r in rounds))
        for path in ("direct", "proxy")
    }  # fmt: skip
    direct, proxy = pooled["direct"], pooled["proxy"]
    per_round = [1 - r["proxy"].rate / r["direct"].rate for r in rounds]
    mean = statistics.fmean(per_round)
    spread = stats.sem(per_round) if len(per_round) > 1 else float("nan")
    low, high = stats.t.interval(0.95, len(per_round) - 1, loc=mean, scale=spread)
    return {
        "concurrency": concurrency,
        "requests": {path: len(got.latencies) for path, got in pooled.items()},
        "direct_p50_ms": 1000 * statistics.median(direct.latencies),
        "direct_p99_ms": 1000 * percentile(direct.latencies, 0.99),
        "added_p50_ms": 1000
        * (statistics.median(proxy.latencies) - statistics.median(direct.latencies)),
        "added_p99_ms": 1000
        * (percentile(proxy.latencies, 0.99) - percentile(direct.latencies, 0.99)),
        "direct_rps": direct.rate,
        "proxy_rps": proxy.rate,
        "throughput_overhead": 1 - proxy.rate / direct.rate,
        "overhead_per_round": per_round,
        "overhead_ci95": [low, high],
        "proxy_cpu_ms_per_request": 1000 * proxy.cpu / len(proxy.latencies),
    }


def looping_prompts(loop: Loop, count: int, max_tokens: int) -> list[str]:
    candidates = loop.inputs.train_prompts[: 5 * count]  # about a third of them loop
    requests = [GenerationRequest(p, max_tokens=max_tokens) for p in candidates]
    answers = loop.backend.generate(requests)
    looping = [r.prompt.text for r, [a] in zip(requests, answers, strict=True)
               if loop.detect(a).degenerate]  # fmt: skip
    return looping[:count]


def streamed_tokens(url: str, prompts: list[str], max_tokens: int) -> tuple[int, float]:
    """Content chunks (tokens) the client received over all prompts, and wall seconds."""
    tokens, started = 0, time.perf_counter()
    with httpx.Client(timeout=600) as client:
        for prompt in prompts:
            body = {"model": "loopd", "prompt": prompt, "max_tokens": max_tokens,
                    "temperature": 0, "stream": True}  # fmt: skip
            with client.stream("POST", url + "/v1/completions", json=body) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                        tokens += 1
    return tokens, time.perf_counter() - started


def loop_stopping(server: VllmServer, model: Path, embedded: Path, args) -> dict:
    results = {}
    for mode in ("off", "stop"):
        with proxy_over(server, model, embedded, mode) as (loop, url):
            prompts = looping_prompts(loop, args.loop_prompts, args.loop_max_tokens)
            tokens, seconds = streamed_tokens(url, prompts, args.loop_max_tokens)
            results[mode] = {"prompts": len(prompts), "tokens": tokens, "seconds": seconds}
    off, stop = results["off"], results["stop"]
    return results | {
        "tokens_saved": off["tokens"] - stop["tokens"],
        "tokens_saved_share": 1 - stop["tokens"] / off["tokens"],
        "time_saved_share": 1 - stop["seconds"] / off["seconds"],
    }


def report(layouts: dict[str, list[dict]], stopping: dict) -> Table:
    table = Table(title="loopd proxy vs direct vLLM (CPU vLLM, embedded model)")
    for column in ("layout", "concurrency", "direct p50 / p99 ms", "added p50 / p99 ms",
                   "direct req/s", "proxy req/s", "throughput overhead (95% CI)",
                   "proxy CPU ms/req"):  # fmt: skip
        table.add_column(column, justify="right")
    for layout, levels in layouts.items():
        for row in levels:
            table.add_row(
                layout,
                str(row["concurrency"]),
                f"{row['direct_p50_ms']:.0f} / {row['direct_p99_ms']:.0f}",
                f"{row['added_p50_ms']:+.1f} / {row['added_p99_ms']:+.1f}",
                f"{row['direct_rps']:.2f}",
                f"{row['proxy_rps']:.2f}",
                f"{100 * row['throughput_overhead']:+.1f}% "
                f"({100 * row['overhead_ci95'][0]:+.0f}..{100 * row['overhead_ci95'][1]:+.0f})",
                f"{row['proxy_cpu_ms_per_request']:.1f}",
            )
    off, stop = stopping["off"], stopping["stop"]
    table.caption = (
        f"loop stopping on {off['prompts']} looping prompts: {off['tokens']} tokens streamed "
        f"with it off, {stop['tokens']} with stop ({100 * stopping['tokens_saved_share']:.0f}% "
        f"saved, {100 * stopping['time_saved_share']:.0f}% less time)"
    )
    return table


def cores(layout: str) -> tuple[set[int], set[int]]:
    """(vLLM and clients, the proxy): core 0 and the rest for ``own-core``, else all."""
    every = os.sched_getaffinity(0)
    if layout == "shared" or len(every) < 2:
        return every, every
    first = min(every)
    return {first}, every - {first}


@contextmanager
def vllm_for(layout: str, model: Path, args: argparse.Namespace) -> Iterator[VllmServer]:
    served_on, _ = cores(layout)
    pinned = frozenset(served_on) if layout == "own-core" else frozenset()
    server = VllmServer(model, served_name=SERVED, log_path=args.workdir / "vllm.log",
                        cpus=pinned)  # fmt: skip
    print(f"{layout}: starting vLLM on {server.url} (log: {server.log_path}) ...", flush=True)
    with server:
        yield server


def measure_layout(layout: str, model: Path, embedded: Path, args) -> list[dict]:
    """Latency levels with this process (the proxy's threads inherit it) on its cores."""
    every = os.sched_getaffinity(0)
    clients_on, proxy_on = cores(layout)
    with vllm_for(layout, model, args) as server:
        os.sched_setaffinity(0, proxy_on)
        try:
            with proxy_over(server, model, embedded, "log") as (_, url):
                return latency_levels(server, url, clients_on, args)
        finally:
            os.sched_setaffinity(0, every)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    args.workdir.mkdir(parents=True, exist_ok=True)
    embedded = ensure_embedded(args.workdir / "embedded", EmbeddedSpec())
    model = embedded / "model"
    layouts = {layout: measure_layout(layout, model, embedded, args) for layout in args.layouts}
    with vllm_for("shared", model, args) as server:
        stopping = loop_stopping(server, model, embedded, args)
    Console().print(report(layouts, stopping))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        figures = {"layouts": layouts, "loop_stopping": stopping}
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
