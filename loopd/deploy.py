"""The deploy stage: make a promoted adapter live, keep its parent ready for rollback.

Requests name the adapter they want, so a swap is: load the new version under a new
serving name, probe it with a real request, then record it as live — from then on the
sampler (and any router reading ``live_name``) sends traffic to it. Nothing is unloaded
before that, so no request ever finds its adapter missing. The parent version (the one
the new adapter was trained from, i.e. the one that was live) stays loaded for rollback;
older versions are unloaded. Every transition is an event in the store.

Operators steer it too (``loopd adapters``): promote a version by hand, roll back to the
live adapter's parent, or *pin* the live version, which freezes every deployment and
rollback until it is unpinned. A version that was rolled back is never promoted again
automatically. One lock serializes all of it, so an operator's command and a round's
deployment never interleave.

Every load first checks the version folder against its manifest's checksums and that it
lies inside the registry (``AdapterRegistry.verify``): a corrupted, tampered or foreign
folder is never sent to serving. If the live version itself fails that check at start,
the newest intact ancestor serves instead (event ``rolled_back``, source ``integrity``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from loopd import failpoints
from loopd.adapters import BASE, AdapterCorrupt, AdapterRegistry, label
from loopd.backends import AdapterLoadError, ServingBackend
from loopd.store import Store
from loopd.types import AdapterVersion, GenerationRequest, Prompt

if TYPE_CHECKING:
    from loopd.metrics import Metrics

log = logging.getLogger(__name__)

PROBE = Prompt(id="loopd-probe", text="Hello")


class DeployFailed(RuntimeError):
    """The new version could not be made live; the previous one still serves."""


class DeployRefused(RuntimeError):
    """A deployment or rollback that policy forbids (a pin, a rolled-back version)."""


class Deployer:
    def __init__(
        self,
        backend: ServingBackend | None,
        store: Store,
        *,
        registry: AdapterRegistry,
        prefix: str,
        probe: Prompt = PROBE,
        watch_samples: int = 0,
    ):
        self.backend = backend
        self.store = store
        self.registry = registry
        self.prefix = prefix
        self.probe = probe
        self.watch_samples = watch_samples
        self.lock = threading.RLock()
        self.protected: set[str] = set()  # candidates under evaluation: never retired
        self.metrics: Metrics | None = None  # set by Loop.attach_metrics: swap times
        # backend None: no serving attached (an operator's command while the daemon is
        # down): transitions are recorded, and the daemon's restore() loads the live one

    def serving_name(self, version: AdapterVersion | None) -> str | None:
        return None if version is None else f"{self.prefix}-{version.name}"

    def live(self) -> AdapterVersion | None:
        number = self.store.live_version()
        return None if number is None else self.store.adapter_version(number)

    def live_name(self) -> str | None:
        return self.serving_name(self.live())

    def refusal(self, version: AdapterVersion | None, *, automatic: bool) -> str | None:
        """Why ``version`` may not go live now, or None."""
        pinned = self.store.pinned_version()
        if pinned is not None and pinned != (BASE if version is None else version.version):
            return (
                f"deployments are pinned to {label(pinned)}; run `loopd adapters unpin` to "
                "let adapters change again"
            )
        if (
            automatic
            and version is not None
            and version.version in self.store.rolled_back_versions()
        ):
            return f"{version.name} was rolled back once and is never promoted automatically"
        return None

    def deploy(
        self,
        version: AdapterVersion,
        *,
        round_id: int | None = None,
        automatic: bool = True,
        reason: str | None = None,
    ) -> None:
        """Load, probe, switch; on any failure the previous version keeps serving."""
        with self.lock:
            refused = self.refusal(version, automatic=automatic)
            if refused:
                raise DeployRefused(f"{version.name} not deployed: {refused}")
            previous = self.live()
            started = time.perf_counter()
            try:
                self._ensure_loaded(version)
                self._probe(version)
                failpoints.reach("deploy.loaded")
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
                source="gate" if automatic else "operator",
                reason=reason,
                **self._watch_baseline(previous),
            )
            if self.metrics is not None:
                self.metrics.adapter_swap_seconds.observe(time.perf_counter() - started)
            name = self.serving_name(version)
            log.info("adapter deployed", extra={"version": version.version, "adapter": name})
            failpoints.reach("deploy.recorded")
            self._retire_all_but(version)

    def _watch_baseline(self, previous: AdapterVersion | None) -> dict[str, Any]:
        """What the deployment watch compares with: the outgoing adapter's recent loops."""
        if not self.watch_samples:
            return {}
        degenerate, samples = self.store.loop_counts(
            self.serving_name(previous), last=self.watch_samples
        )
        return {"watch_from": self.store.max_sample_id(), "before": [degenerate, samples]}

    def rollback(self, *, reason: str, automatic: bool = False) -> AdapterVersion | None:
        """Make the live adapter's parent live again (None: the bare base model)."""
        with self.lock:
            current = self.live()
            if current is None:
                raise DeployRefused("nothing to roll back: the bare base model is live")
            pinned = self.store.pinned_version()
            if pinned is not None:
                raise DeployRefused(
                    f"rollback refused: deployments are pinned to {label(pinned)}; run "
                    "`loopd adapters unpin` first"
                )
            parent = None if current.parent is None else self.store.adapter_version(current.parent)
            try:
                if parent is not None:
                    self._ensure_loaded(parent)
            except (AdapterLoadError, DeployFailed) as error:
                raise DeployFailed(
                    f"rollback failed, {current.name} still live: {error}"
                ) from error
            self.store.record_event(
                "rolled_back",
                version=None if parent is None else parent.version,
                reason=reason,
                previous=current.version,
                source="watch" if automatic else "operator",
            )
            log.warning("adapter rolled back", extra={"from": current.version, "reason": reason})
            self._retire_all_but(parent)
            return parent

    def pin(self, version: AdapterVersion | None) -> None:
        """Freeze deployments on ``version`` (None: the base model), deploying it first if
        it is not live."""
        with self.lock:
            live = self.store.live_version()
            if version is None and live is not None:
                raise DeployRefused(
                    f"{label(live)} is live: roll back to the base model before pinning it"
                )
            if version is not None and live != version.version:
                self.deploy(version, automatic=False, reason="pinned by the operator")
            self.store.record_event("pinned", version=BASE if version is None else version.version)

    def unpin(self) -> int | None:
        """Let adapters change again; returns the version that was pinned."""
        with self.lock:
            pinned = self.store.pinned_version()
            if pinned is not None:
                self.store.record_event("unpinned", version=pinned)
            return pinned

    def restore(self) -> AdapterVersion | None:
        """After a (re)start, load what the store says is live, and its rollback parent.

        A live version whose files no longer match their checksums is not loaded: its
        newest intact ancestor (or the base model) is made live and the event says why.
        """
        live = self.live()
        if live is None:
            return None
        try:
            self.registry.verify(live.path)
        except AdapterCorrupt as error:
            live = self._fall_back_from(live, error)
        if live is not None:
            self._ensure_loaded(live)
        self._retire_all_but(live)
        return live

    def _fall_back_from(
        self, broken: AdapterVersion, error: AdapterCorrupt
    ) -> AdapterVersion | None:
        ancestor = self._intact_ancestor(broken)
        log.error(
            "live adapter failed its integrity check; serving its intact ancestor",
            extra={
                "version": broken.version,
                "error": str(error),
                "now_live": label(ancestor and ancestor.version),
            },
        )
        self.store.record_event(
            "rolled_back",
            version=None if ancestor is None else ancestor.version,
            previous=broken.version,
            source="integrity",
            reason=str(error),
        )
        return ancestor

    def _intact_ancestor(self, version: AdapterVersion) -> AdapterVersion | None:
        parent = version.parent
        while parent is not None:
            candidate = self.store.adapter_version(parent)
            if candidate is None:
                return None
            try:
                self.registry.verify(candidate.path)
                return candidate
            except AdapterCorrupt:
                parent = candidate.parent
        return None

    def load(self, version: AdapterVersion) -> None:
        """Load ``version`` beside what serves (a candidate), under its serving name."""
        with self.lock:
            self._ensure_loaded(version)

    def _ensure_loaded(self, version: AdapterVersion) -> None:
        """Load ``version`` unless it serves already; only an intact registry folder."""
        name = self.serving_name(version)
        if self.backend is not None and name in self.backend.adapters():
            return
        try:
            self.registry.verify(version.path)
        except AdapterCorrupt as error:
            raise DeployFailed(f"{version.name} refused: {error}") from error
        if self.backend is not None:
            self.backend.load_adapter(name, version.path)

    def _keep_ready_for_rollback(self, parent: AdapterVersion) -> None:
        """Load the parent beside the live one; a parent that cannot load only warns (a
        rollback to it would then fail and say why, with the live one still serving)."""
        try:
            self._ensure_loaded(parent)
        except (AdapterLoadError, DeployFailed) as error:
            log.warning(
                "rollback parent not loaded", extra={"version": parent.version, "error": str(error)}
            )

    def _probe(self, version: AdapterVersion) -> None:
        if self.backend is None:
            return
        request = GenerationRequest(self.probe, max_tokens=4, adapter=self.serving_name(version))
        try:
            self.backend.generate([request])
        except Exception as error:
            self.backend.unload_adapter(self.serving_name(version))
            raise DeployFailed(f"probe request on {version.name} failed: {error}") from error

    def _retire_all_but(self, live: AdapterVersion | None) -> None:
        """Unload this deployer's adapters except the live one and its parent."""
        parent = None
        if live is not None and live.parent is not None:
            parent = self.store.adapter_version(live.parent)
        keep = {self.serving_name(live), self.serving_name(parent), *self.protected}
        if parent is not None:
            self._keep_ready_for_rollback(parent)
        if self.backend is None:
            return
        for name in self.backend.adapters():
            if name.startswith(f"{self.prefix}-") and name not in keep:
                self.backend.unload_adapter(name)
