"""Every completion the proxy serves is detected and stored, without slowing serving.

Policy (documented in the README): a served completion is *offered* to a bounded queue,
which never blocks. Accepted ones are written by one thread in batches (one transaction
each, up to ``proxy.write_batch``); a failed write (disk full, database locked) is
retried with backoff, never dropped, and on shutdown the queue is drained before the
process exits. When the queue is full the completion is served anyway and not stored:
counted in ``loopd_proxy_recording_dropped_total``, and one in every ``LOG_EVERY`` drops
is logged (its prompt id, never its text), so an operator sees what is lost and can raise
``proxy.queue_size``. Samples posted to the ingest API do not go through the queue: they
are stored before the 2xx that acknowledges them.

The writer is not woken per completion: it looks at the queue every ``linger_s`` and
takes what is there. A wake-up per answer would hand the GIL to the writer right when
the proxy is sending that answer (measured: ~3 ms added per request at concurrency 1),
and a batch costs a third of the CPU per sample that single writes do.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from loopd.proxy.metrics import ProxyMetrics
from loopd.store import Store
from loopd.types import Completion, Detection, Prompt

log = logging.getLogger(__name__)
LOG_EVERY = 100
LINGER_S = 0.05  # how long an offered completion may wait for its batch
Offered = tuple[Prompt, Completion]


class SampleRecorder:
    def __init__(
        self,
        store: Store,
        detect: Callable[[Completion], Detection],
        metrics: ProxyMetrics,
        *,
        queue_size: int,
        batch: int,
        backoff_s: float = 0.5,
        linger_s: float = LINGER_S,
    ):
        self._store = store
        self._detect = detect
        self._metrics = metrics
        self._queue: queue.Queue[Offered] = queue.Queue(maxsize=queue_size)
        self._batch = batch
        self._backoff_s = backoff_s
        self._linger_s = linger_s
        self._dropped = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loopd-proxy-recorder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, prompt: Prompt, completion: Completion) -> bool:
        """Queue one completion for storing; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait((prompt, completion))
        except queue.Full:
            self._dropped += 1
            self._metrics.dropped.labels("queue_full").inc()
            if self._dropped % LOG_EVERY == 1:
                log.warning(
                    "recording queue full; completion served, not stored",
                    extra={"prompt_id": prompt.id, "dropped_so_far": self._dropped},
                )
            return False
        self._metrics.queue_depth.inc()
        return True

    def flush(self) -> None:
        """Return once everything offered so far is in the store."""
        self._queue.join()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Store what is queued, then stop the writer (waiting at most ``timeout_s``)."""
        self._stopping.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("proxy samples left unstored at exit", extra={"left": self._queue.qsize()})

    def _run(self) -> None:
        while not (self._stopping.is_set() and self._queue.empty()):
            batch = self._take()
            if batch:
                self._write(batch)

    def _take(self) -> list[Offered]:
        """What is queued (at most a batch), after waiting ``linger_s`` if nothing was."""
        if self._queue.empty():
            self._stopping.wait(self._linger_s)
        batch: list[Offered] = []
        while len(batch) < self._batch:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[Offered]) -> None:
        rows = [(prompt, completion, self._detect(completion)) for prompt, completion in batch]
        attempt = 0
        while True:
            try:
                self._store.add_samples(rows)
                break
            except Exception as error:  # kept and retried: an accepted sample is never lost
                attempt += 1
                self._metrics.write_retries.inc()
                log.warning("storing proxy samples failed; retrying", extra={"error": str(error)})
                time.sleep(min(self._backoff_s * 2**attempt, 30.0))
        self._metrics.recorded.inc(len(rows))
        self._metrics.recorded_degenerate.inc(sum(r[2].degenerate for r in rows))
        self._metrics.queue_depth.dec(len(rows))
        for _ in rows:
            self._queue.task_done()
