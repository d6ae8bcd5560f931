"""Structured logging: one JSON object a line in daemon mode, readable text on a terminal.

Call sites log with ``extra={...}``; those fields become keys of the JSON object, so an
operator can filter on ``round`` or ``adapter`` without parsing prose.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{record.levelname.lower():7} {record.name}: {record.getMessage()} {tail}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line.rstrip()


def configure(fmt: str = "json", level: int = logging.INFO) -> None:
    """Route loopd's logs to stderr in ``fmt``; quiet the chatty libraries underneath."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("loopd").setLevel(level)
    # "skipped: maximum number of running instances reached" is the intended no-overlap
    # rule (a round outlasts many checks), not news; job failures loopd logs itself
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
