"""The deploy stage: make a promoted adapter live, keep its parent ready for rollback.

Requests name the adapter they want, so a swap is: load the new version under a new
serving name, probe it with a real request, then record it as live — from then on the
sampler (and any router reading ``live_name``) sends traffic to it. Nothing is unloaded
before that, so no request ever finds its adapter missing. The parent version (the one
the new adapter was trained from, i.e. the one that was live) stays loaded for rollback;
older versions are unloaded. Every transition is an event in the store.
"""

from __future__ import annotations

import logging

from loopd.backends import AdapterLoadError, ServingBackend
from loopd.store import Store
from loopd.types import AdapterVersion, GenerationRequest, Prompt

log = logging.getLogger(__name__)

PROBE = Prompt(id="loopd-probe", text="Hello")


class DeployFailed(RuntimeError):
    """The new version could not be made live; the previous one still serves."""


class Deployer:
    def __init__(
        self, backend: ServingBackend, store: Store, *, prefix: str, probe: Prompt = PROBE
    ):
        self.backend = backend
        self.store = store
        self.prefix = prefix
        self.probe = probe

    def serving_name(self, version: AdapterVersion | None) -> str | None:
        return None if version is None else f"{self.prefix}-{version.name}"

    def live(self) -> AdapterVersion | None:
        number = self.store.live_version()
        return None if number is None else self.store.adapter_version(number)

    def live_name(self) -> str | None:
        return self.serving_name(self.live())

    def deploy(self, version: AdapterVersion, *, round_id: int | None = None) -> None:
        """Load, probe, switch; on any failure the previous version keeps serving."""
        previous = self.live()
        try:
            self._ensure_loaded(version)
            self._probe(version)
        except (AdapterLoadError, DeployFailed) as error:
            self.store.record_event(
                "deploy_failed", version=version.version, round_id=round_id, error=str(error)
            )
            raise DeployFailed(str(error)) from error
        self.store.record_event(
            "deployed",
            version=version.version,
            round_id=round_id,
            previous=None if previous is None else previous.version,
        )
        name = self.serving_name(version)
        log.info("adapter deployed", extra={"version": version.version, "adapter": name})
        self._retire_all_but(version)

    def rollback(self, *, reason: str) -> AdapterVersion | None:
        """Make the live adapter's parent live again (None: the bare base model)."""
        current = self.live()
        if current is None:
            return None
        parent = None if current.parent is None else self.store.adapter_version(current.parent)
        if parent is not None:
            self._ensure_loaded(parent)
        self.store.record_event(
            "rolled_back",
            version=None if parent is None else parent.version,
            reason=reason,
            previous=current.version,
        )
        log.warning("adapter rolled back", extra={"from": current.version, "reason": reason})
        return parent

    def restore(self) -> AdapterVersion | None:
        """After a (re)start, load what the store says is live, and its rollback parent."""
        live = self.live()
        if live is not None:
            self._ensure_loaded(live)
            self._retire_all_but(live)
        return live

    def _ensure_loaded(self, version: AdapterVersion) -> None:
        name = self.serving_name(version)
        if name not in self.backend.adapters():
            self.backend.load_adapter(name, version.path)

    def _probe(self, version: AdapterVersion) -> None:
        request = GenerationRequest(self.probe, max_tokens=4, adapter=self.serving_name(version))
        try:
            self.backend.generate([request])
        except Exception as error:
            self.backend.unload_adapter(self.serving_name(version))
            raise DeployFailed(f"probe request on {version.name} failed: {error}") from error

    def _retire_all_but(self, live: AdapterVersion) -> None:
        """Unload this deployer's adapters except the live one and its parent."""
        parent = None if live.parent is None else self.store.adapter_version(live.parent)
        keep = {self.serving_name(live), self.serving_name(parent)}
        if parent is not None:
            self._ensure_loaded(parent)
        for name in self.backend.adapters():
            if name.startswith(f"{self.prefix}-") and name not in keep:
                self.backend.unload_adapter(name)
