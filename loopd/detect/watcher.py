"""``LoopWatcher``: the detector on a stream, so a proxy can stop a loop early."""

from __future__ import annotations

from loopd.detect.config import DEFAULT_CONFIG, DetectorConfig
from loopd.detect.floors import scaled_for
from loopd.detect.plan import raw_accept, raw_limits, token_limits
from loopd.detect.runs import Run, tail_run
from loopd.detect.search import Found
from loopd.detect.verdict import detect, from_text_run, from_token_run
from loopd.types import Detection

_FULL_CHECK_CHARS = 1024  # LoopWatcher, text pieces: characters between full checks


class LoopWatcher:
    """Watch a stream as it is generated and report a loop as soon as it is established.

    Feed token ids (``int``) or decoded text pieces (``str``), one stream per watcher,
    not mixed. Every ``config.watch_check_every`` tokens the watcher runs the batch
    detector's token search on a bounded window of the stream, so the work per token is
    amortized constant and its verdict is the batch detector's on the stream so far. Text
    pieces get the batch detector's first stage (exact loops on the raw text) every 4x
    that many characters and the whole detector every ``_FULL_CHECK_CHARS`` characters,
    which keeps the cost under 1 µs per token (``bench/detect.py``). Once a loop is
    found the watcher latches: ``feed`` keeps returning that ``Detection``, with offsets
    counted from the start of the stream. Call ``finish()`` at the end of the stream to
    check the last pieces.

        watcher = LoopWatcher(cfg.detector)
        for token in stream:
            if watcher.feed(token):
                break  # stop generating
    """

    def __init__(self, config: DetectorConfig = DEFAULT_CONFIG) -> None:
        self.config = config
        self._every = config.watch_check_every
        self._pending: list[str] = []
        self._since = 0
        self._buf = ""
        self._dropped = 0
        self._text = False
        self._since_full = 0
        self.detection: Detection | None = None

    def feed(self, piece: int | str) -> Detection | None:
        """Add one token id or text piece; return the Detection once a loop is established."""
        if self.detection is not None:
            return self.detection
        if type(piece) is int:  # one character per id (ids past Unicode's range wrap)
            self._pending.append(chr(piece % 0x110000))
            self._since += 1
        else:
            self._text = True
            self._pending.append(piece)
            self._since += len(piece)
            self._since_full += len(piece)
            if self._since < 4 * self._every:
                return None
        if self._since >= self._every:
            return self._check()
        return None

    def finish(self) -> Detection | None:
        """Check whatever arrived since the last check (call once the stream ends)."""
        if self.detection is None and (self._pending or self._since_full):
            return self._check(full=True)
        return self.detection

    @property
    def consumed(self) -> int:
        """Tokens (or characters, for text pieces) seen so far, checked or not."""
        return self._dropped + len(self._buf) + sum(map(len, self._pending))

    def _check(self, full: bool = False) -> Detection | None:
        """Append the pending pieces to the window and run the tail search once."""
        cfg = self.config
        window = cfg.watch_window_chars if self._text else cfg.watch_window_tokens
        buf = self._buf + "".join(self._pending)
        self._pending.clear()
        self._since = 0
        if len(buf) > window:
            self._dropped += len(buf) - window
            buf = buf[-window:]
        self._buf = buf
        if self._text:
            det = self._text_check(buf, full)
        else:
            run = self._token_check(buf)
            det = None if run is None else from_token_run("", [0] * len(buf), run)
        if det is None or not det.degenerate:
            return None
        self.detection = self._shift(det)
        return self.detection

    def _token_check(self, buf: str) -> Run | None:
        """The batch token pass on the window: the config's floors, then, while the stream
        is still short, the floors scaled to it (as ``detect`` does on the ids so far)."""
        cfg = self.config
        run = tail_run(buf, token_limits(cfg))
        if run is None and self.consumed * cfg.short_loop_share < cfg.min_loop_tokens:
            run = tail_run(buf, token_limits(scaled_for(cfg, "", self.consumed)))
        return run

    def _text_check(self, buf: str, full: bool) -> Detection | None:
        """The raw-text stage of the batch detector, or (now and then) all of it."""
        if full or self._since_full >= _FULL_CHECK_CHARS:
            self._since_full = 0
            return detect(buf, config=self.config)
        text = buf.rstrip()
        run = tail_run(text, raw_limits(self.config), accept=raw_accept(self.config))
        return None if run is None else from_text_run(buf, Found("cycle", run, None, 0), None, None)

    def _shift(self, det: Detection) -> Detection:
        """Make window offsets absolute (from the start of the stream)."""
        if self._text:
            start = None if det.loop_start is None else det.loop_start + self._dropped
            return Detection(**{**det.__dict__, "loop_start": start})
        start_token = det.loop_start_token + self._dropped
        return Detection(**{**det.__dict__, "loop_start": None, "loop_start_token": start_token})
