"""Relaying a stream to the client while the loop watcher reads it.

Each choice of a stream has its own ``LoopWatcher`` fed the text pieces as they pass.
``proxy.loop_stopping``:

- ``off``: the stream is relayed unread;
- ``log``: a loop is counted (``loopd_proxy_stream_loops{action="log"}``) and logged;
- ``stop``: once every unfinished choice is looping, the upstream request is closed
  (vLLM aborts a request whose client went away), the client gets one last chunk per
  looping choice with ``finish_reason: "repetition"`` and ``stop_reason: "loopd_loop"``,
  then ``[DONE]``. ``max_tokens`` minus the tokens generated so far is counted as saved.

Either way the whole text generated, loop included, is what gets stored: the loop is
still there to become a rejected answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from loopd.detect import DetectorConfig, LoopWatcher
from loopd.proxy.calls import ProxyCall
from loopd.proxy.metrics import ProxyMetrics

log = logging.getLogger(__name__)
STOPPED = "repetition"
STOP_REASON = "loopd_loop"
DONE = b"data: [DONE]\n\n"


@dataclass
class ChoiceText:
    """What one choice of the stream said so far."""

    pieces: list[str] = field(default_factory=list)
    tokens: int = 0
    finish_reason: str | None = None
    watcher: LoopWatcher | None = None
    looped: bool = False

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class WatchedStream:
    """One stream's relay; after it ran, ``choices`` and ``stopped`` say what happened."""

    def __init__(
        self,
        call: ProxyCall,
        chunks: AsyncIterator[dict[str, Any]],
        *,
        mode: Literal["off", "log", "stop"],
        detector: DetectorConfig,
        metrics: ProxyMetrics,
    ):
        self.call = call
        self._chunks = chunks
        self._mode = mode
        self._detector = detector
        self._metrics = metrics
        self.choices: dict[int, ChoiceText] = {}
        self.stopped = False
        self._last: dict[str, Any] = {}

    async def relay(self, first: dict[str, Any]) -> AsyncIterator[bytes]:
        """The SSE bytes for the client, starting with the already-received ``first``."""
        try:
            yield self._take(first)
            while not (stop := self._should_stop()):
                chunk = await anext(self._chunks, None)
                if chunk is None:
                    break
                yield self._take(chunk)
            if stop:
                # Cancel upstream before telling the client: every token the server makes
                # from here on is spent for nothing.
                await self._chunks.aclose()
                yield self._stop()
            yield DONE
        finally:
            await self._chunks.aclose()

    def _take(self, chunk: dict[str, Any]) -> bytes:
        self._last = chunk
        for choice in chunk.get("choices") or ():
            self._read(choice)
        return sse(chunk)

    def _read(self, choice: dict[str, Any]) -> None:
        state = self.choices.setdefault(int(choice.get("index", 0)), ChoiceText())
        piece = _piece_text(self.call, choice)
        if piece:
            state.pieces.append(piece)
            state.tokens += 1
            self._watch(state, piece)
        if choice.get("finish_reason"):
            state.finish_reason = choice["finish_reason"]

    def _watch(self, state: ChoiceText, piece: str) -> None:
        if self._mode == "off" or state.looped:
            return
        if state.watcher is None:
            state.watcher = LoopWatcher(self._detector)
        if state.watcher.feed(piece) is not None:
            state.looped = True
            if self._mode == "log":
                self._metrics.stream_loops.labels("log").inc()
                log.info("loop in a stream", extra={"prompt_id": self.call.prompt.id})

    def _should_stop(self) -> bool:
        if self._mode != "stop":
            return False
        open_choices = [c for c in self._all_choices() if c.finish_reason is None]
        return bool(open_choices) and all(c.looped for c in open_choices)

    def _all_choices(self) -> list[ChoiceText]:
        for index in range(self.call.choices):
            self.choices.setdefault(index, ChoiceText())
        return list(self.choices.values())

    def _stop(self) -> bytes:
        """The closing chunk: every looping choice ends with the documented reason."""
        self.stopped = True
        ends = []
        for index, state in sorted(self.choices.items()):
            if state.finish_reason is None:
                state.finish_reason = STOPPED
                ends.append(_ending(self.call, index))
                self._count_saved(state)
        self._metrics.stream_loops.labels("stop").inc()
        log.info("stopped a looping stream", extra={"prompt_id": self.call.prompt.id})
        head = {k: v for k, v in self._last.items() if k not in ("choices", "usage")}
        return sse(head | {"choices": ends})

    def _count_saved(self, state: ChoiceText) -> None:
        if self.call.max_tokens is not None:
            self._metrics.tokens_saved.inc(max(0, self.call.max_tokens - state.tokens))


def _piece_text(call: ProxyCall, choice: dict[str, Any]) -> str:
    if call.route == "chat":
        return (choice.get("delta") or {}).get("content") or ""
    return choice.get("text") or ""


def _ending(call: ProxyCall, index: int) -> dict[str, Any]:
    end = {"index": index, "finish_reason": STOPPED, "stop_reason": STOP_REASON}
    return end | ({"delta": {}} if call.route == "chat" else {"text": "", "logprobs": None})
