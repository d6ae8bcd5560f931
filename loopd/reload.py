"""Config changes at run time: read, validate, diff, refuse what needs a restart.

Three doors lead here — SIGHUP, the config file changing on disk, and
``POST /admin/reload`` — and all of them go through ``Reloader.reload``, one at a time.
A file that does not validate, or that changes a field only a restart can change, is
rejected whole: the running config stays in force, untouched, and the result names every
field and why. A file identical to the running config is ``unchanged``. Anything else is
handed to ``apply`` (the daemon's), which makes it the config the next job reads.

This module decides *whether* a config may replace the running one; the daemon decides
*how* (reschedule jobs, reconfigure the loop and the proxy).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, SecretStr

from loopd.config import ConfigError, LoopdConfig, load_config

log = logging.getLogger(__name__)

# What only a restart can change, by dotted prefix, with the reason an operator is shown.
RESTART_ONLY: dict[str, str] = {
    "state_dir": "the database and adapters live there",
    "model": "the base model is loaded once into serving and training",
    "serving.backend": "the serving backend is opened at start",
    "serving.vllm": "the vLLM client and its connections are opened at start",
    "serving.batch_size": "the in-process engine is built at start",
    "serving.threads": "the in-process engine is built at start",
    "sampling.prompts": "prompt files are read and checked for reused ids at start",
    "gate.heldout": "the held-out set and its rotation are kept in the database at start",
    "deploy.adapter_prefix": "adapters already loaded in serving carry the old names",
    "daemon.host": "the HTTP server is bound at start",
    "daemon.port": "the HTTP server is bound at start",
    "daemon.log_format": "logging is configured at start",
    "proxy.enabled": "the proxy's server is started at start",
    "proxy.host": "the proxy's server is bound at start",
    "proxy.port": "the proxy's server is bound at start",
    "proxy.model_name": "clients address the proxy by it",
    "proxy.record": "the proxy's recorder is started at start",
    "proxy.queue_size": "the proxy's recording queue is created at start",
    "proxy.write_batch": "the proxy's recording queue is created at start",
    "proxy.redact_patterns": "prompt ids already stored were derived from redacted words",
    "proxy.redact_with": "prompt ids already stored were derived from redacted words",
}
SECRET_MASK = "**********"

Outcome = Literal["applied", "unchanged", "rejected"]


@dataclass(frozen=True)
class ReloadResult:
    """What one reload did; ``changes`` maps dotted fields to (old, new), secrets masked."""

    result: Outcome
    source: str
    generation: int
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "source": self.source,
            "generation": self.generation,
            "changes": {k: {"old": old, "new": new} for k, (old, new) in self.changes.items()},
            "problems": self.problems,
        }


class Reloader:
    """Holds the running config and its generation; swaps it only for a valid one."""

    def __init__(
        self,
        path: Path | None,
        current: LoopdConfig,
        *,
        apply: Callable[[LoopdConfig], None],
        on_result: Callable[[ReloadResult], None] = lambda result: None,
    ):
        self.path = path
        self.current = current
        self.generation = 1
        self._apply = apply
        self._on_result = on_result
        self._lock = threading.Lock()

    def reload(self, source: str) -> ReloadResult:
        """Read the config file again and apply it if it may replace the running one."""
        with self._lock:
            result = self._reload(source)
        _log(result)
        self._on_result(result)
        return result

    def _reload(self, source: str) -> ReloadResult:
        if self.path is None:
            return self._result("rejected", source, problems=["no config file: started without"])
        try:
            new = load_config(self.path)
        except ConfigError as error:
            return self._result("rejected", source, problems=error.problems)
        changes = diff(self.current, new)
        if not changes:
            return self._result("unchanged", source)
        problems = restart_needed(changes)
        if problems:
            return self._result("rejected", source, changes=changes, problems=problems)
        self._apply(new)
        self.current = new
        self.generation += 1
        return self._result("applied", source, changes=changes)

    def _result(self, outcome: Outcome, source: str, **fields: Any) -> ReloadResult:
        changes = {
            k: (_shown(old), _shown(new)) for k, (old, new) in fields.pop("changes", {}).items()
        }
        return ReloadResult(outcome, source, self.generation, changes=changes, **fields)


def diff(old: LoopdConfig, new: LoopdConfig) -> dict[str, tuple[Any, Any]]:
    """Every leaf field whose value differs, by dotted path (secrets compared, not shown)."""
    before, after = flatten(old), flatten(new)
    return {
        key: (before.get(key), after.get(key))
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    }


def flatten(model: BaseModel, prefix: str = "") -> dict[str, Any]:
    """A config as ``{"section.field": value}``; values keep their types (secrets too)."""
    leaves: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            leaves.update(flatten(value, f"{key}."))
        else:
            leaves[key] = value
    return leaves


def restart_needed(changes: dict[str, Any]) -> list[str]:
    """One line per changed field that only a restart can change, with the reason."""
    problems = []
    for key in changes:
        prefix = next((p for p in RESTART_ONLY if key == p or key.startswith(p + ".")), None)
        if prefix is not None:
            problems.append(
                f"{key}: needs a restart ({RESTART_ONLY[prefix]}); restore its running value "
                "to reload the rest, or restart loopd to apply it"
            )
    return problems


def redacted(cfg: LoopdConfig) -> dict[str, Any]:
    """The config as JSON-able data with every secret masked (for /status and logs)."""
    return cfg.model_dump(mode="json")  # pydantic dumps SecretStr as '**********'


def _shown(value: Any) -> Any:
    """A value as logs and the API may show it: secrets masked, paths as text."""
    if isinstance(value, SecretStr):
        return SECRET_MASK
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_shown(v) for v in value]
    return value


def _log(result: ReloadResult) -> None:
    fields = {"source": result.source, "generation": result.generation}
    if result.result == "applied":
        log.info("config reloaded", extra={**fields, "changes": result.as_dict()["changes"]})
    elif result.result == "unchanged":
        log.info("config reload: nothing changed", extra=fields)
    else:
        log.error(
            "config reload rejected; the running config stays",
            extra={**fields, "problems": result.problems},
        )
