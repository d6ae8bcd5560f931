"""Benchmark LoRA hot-swap through a real vLLM server.

Measures, against vLLM (CPU build here, any vLLM with ``--enable-lora`` elsewhere):

1. swap latency: from "adapter folder complete" (the atomic rename that publishes it)
   to the first response a sampling client gets from the new version (p50 / p95), with
   the load+probe part alone beside it;
2. failed requests during ``--swaps`` swaps while ``--clients`` clients keep sampling
   (must be 0), and the throughput they saw;
3. vLLM host memory (RSS of the server's process group) before and after ``--cycles``
   load/unload cycles, each under a new name as loopd's deployer does.

Run:  python bench/swap.py                   # starts its own vLLM from .venv-vllm
      python bench/swap.py --endpoint http://127.0.0.1:8000 --served-name base
      python bench/swap.py --json build/bench-swap.json

With ``--endpoint`` memory is not measured (the server's processes are not ours).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loopd.backends.vllm import VllmBackend, VllmConfig  # noqa: E402
from loopd.backends.vllm.server import VllmServer  # noqa: E402
from loopd.embedded import EmbeddedSpec, ensure_embedded  # noqa: E402
from loopd.types import GenerationRequest, Prompt  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT = Prompt(id="bench", text="doc: amber anchor candle river tiger text:")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "build" / "bench-swap")
    parser.add_argument("--model", type=Path, help="base model folder (default: embedded)")
    parser.add_argument("--endpoint", help="use this running vLLM instead of starting one")
    parser.add_argument("--served-name", default="base", help="vLLM's served model name")
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    return parser.parse_args()


class AdapterWriter:
    """Writes seeded LoRA folders the way training publishes them: beside, then rename."""

    def __init__(self, model: Path, root: Path):
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        self.peft = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
        self.root = root

    def write(self, seed: int) -> tuple[Path, float]:
        """Returns the folder and the moment it became complete (after the rename)."""
        final = self.root / f"adapter-{seed:05d}"
        staging = final.with_name(final.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in self.peft.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        self.peft.save_pretrained(staging)
        staging.rename(final)
        return final, time.perf_counter()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def swaps_under_load(
    backend: VllmBackend, writer: AdapterWriter, *, swaps: int, clients: int, max_tokens: int
) -> dict[str, float]:
    """Steps per swap: (1) publish a folder; (2) load + probe; (3) route clients to it;
    (4) note the first client response from it; (5) unload the old version (drained)."""
    first_seen: dict[str, float] = {}
    live = ["bench-v0000"]
    folder, _ = writer.write(0)
    backend.load_adapter(live[0], folder)
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0, "misattributed": 0}
    lock = threading.Lock()

    def client() -> None:
        while not stop.is_set():
            name = live[0]
            request = GenerationRequest(PROMPT, max_tokens, adapter=name)
            try:
                [[completion]] = backend.generate([request])
            except Exception as error:
                with lock:
                    counts["failed"] += 1
                logging.warning("request failed: %s", error)
                continue
            now = time.perf_counter()
            with lock:
                counts["ok"] += 1
                counts["misattributed"] += completion.adapter != name
                first_seen.setdefault(completion.adapter or "", now)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    to_first, load_probe, drain = [], [], []
    for version in range(1, swaps + 1):
        time.sleep(0.25)
        name = f"bench-v{version:04d}"
        folder, complete_at = writer.write(version)
        began = time.perf_counter()
        backend.load_adapter(name, folder)
        load_probe.append(time.perf_counter() - began)
        old, live[0] = live[0], name
        began = time.perf_counter()
        backend.unload_adapter(old)
        drain.append(time.perf_counter() - began)
        while name not in first_seen and time.perf_counter() - complete_at < 30:
            time.sleep(0.001)
        to_first.append(first_seen[name] - complete_at)
    time.sleep(0.25)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    elapsed = time.perf_counter() - started
    backend.unload_adapter(live[0])
    return {
        "swaps": swaps,
        "clients": clients,
        "requests_ok": counts["ok"],
        "requests_failed": counts["failed"],
        "misattributed": counts["misattributed"],
        "requests_per_s": counts["ok"] / elapsed,
        "folder_to_first_response_p50_s": statistics.median(to_first),
        "folder_to_first_response_p95_s": percentile(to_first, 0.95),
        "load_probe_p50_s": statistics.median(load_probe),
        "load_probe_p95_s": percentile(load_probe, 0.95),
        "unload_with_drain_p50_s": statistics.median(drain),
    }


def memory_cycles(
    backend: VllmBackend, writer: AdapterWriter, server: VllmServer | None, *, cycles: int
) -> dict[str, float]:
    """Load (+probe, so the engine really holds the weights) and unload, new name each time."""
    folders = [writer.write(1000 + i)[0] for i in range(min(cycles, 10))]
    before = server.rss_bytes() if server else 0
    started = time.perf_counter()
    for cycle in range(cycles):
        name = f"mem-v{cycle:04d}"
        backend.load_adapter(name, folders[cycle % len(folders)])
        backend.generate([GenerationRequest(PROMPT, 2, adapter=name)])
        backend.unload_adapter(name)
    seconds = time.perf_counter() - started
    time.sleep(1.0)
    after = server.rss_bytes() if server else 0
    result = {"cycles": cycles, "cycle_s": seconds / cycles}
    if server:
        result |= {
            "rss_before_mib": before / 2**20,
            "rss_after_mib": after / 2**20,
            "rss_growth_mib": (after - before) / 2**20,
            "rss_growth_kib_per_cycle": (after - before) / 1024 / cycles,
        }
    return result


def table(figures: dict[str, dict[str, float]]) -> str:
    swap, memory = figures["swap"], figures["memory"]
    rows = [
        (
            "adapter folder complete → first response, p50",
            f"{swap['folder_to_first_response_p50_s'] * 1000:.0f} ms",
        ),
        (
            "adapter folder complete → first response, p95",
            f"{swap['folder_to_first_response_p95_s'] * 1000:.0f} ms",
        ),
        (
            "load + probe, p50 / p95",
            f"{swap['load_probe_p50_s'] * 1000:.0f} / {swap['load_probe_p95_s'] * 1000:.0f} ms",
        ),
        ("unload incl. drain, p50", f"{swap['unload_with_drain_p50_s'] * 1000:.0f} ms"),
        (
            f"failed requests during {swap['swaps']} swaps, {swap['clients']} clients",
            f"{swap['requests_failed']} of {swap['requests_ok'] + swap['requests_failed']}",
        ),
        ("responses not from the requested version", f"{swap['misattributed']}"),
        ("client throughput during swaps", f"{swap['requests_per_s']:.1f} req/s"),
        (f"load/unload cycle ({memory['cycles']}×), mean", f"{memory['cycle_s'] * 1000:.0f} ms"),
    ]
    if "rss_before_mib" in memory:
        rows += [
            (
                "vLLM RSS before → after cycles",
                f"{memory['rss_before_mib']:.0f} → {memory['rss_after_mib']:.0f} MiB",
            ),
            (
                f"vLLM RSS growth over {memory['cycles']} cycles",
                f"{memory['rss_growth_mib']:+.1f} MiB "
                f"({memory['rss_growth_kib_per_cycle']:+.0f} KiB/cycle)",
            ),
        ]
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'measure'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = args.model or ensure_embedded(args.workdir / "embedded", EmbeddedSpec()) / "model"
    server = None
    if args.endpoint is None:
        server = VllmServer(model, served_name=args.served_name, log_path=args.workdir / "vllm.log")
        print(f"starting vLLM on {server.url} (log: {server.log_path}) ...", flush=True)
        server.start()
    config = VllmConfig(
        endpoints=[args.endpoint or server.url], monitor_interval_s=0, drain_quiet_s=0.2
    )
    try:
        writer = AdapterWriter(model, args.workdir / "adapters")
        with VllmBackend(config, base_model_name=args.served_name) as backend:
            swap = swaps_under_load(
                backend, writer, swaps=args.swaps, clients=args.clients, max_tokens=args.max_tokens
            )
            memory = memory_cycles(backend, writer, server, cycles=args.cycles)
    finally:
        if server is not None:
            server.stop()
    figures = {"swap": swap, "memory": memory}
    print(table(figures))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    if swap["requests_failed"] or swap["misattributed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
