"""The loop itself: the one place that knows the stage order.

    sample → detect → store → pair         (``sample_round``, run on an interval)
    train → evaluate → gate → deploy       (``training_round``, when enough fresh pairs)

Stages are plain functions over plain data; this module passes their outputs along and
records what happened. Collaborators (serving backend, store, clock) are passed in, so a
test can drive whole cycles with no sleeps and no network.
"""

from __future__ import annotations

import logging
import random
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from loopd import canary as canaries
from loopd import detect as detector
from loopd import failpoints, heldout, readiness
from loopd.adapters import AdapterRegistry
from loopd.backends import ObservedBackend, ServingBackend
from loopd.config import LoopdConfig
from loopd.deploy import Deployer, DeployFailed, DeployRefused
from loopd.evaluate import HeldoutEvaluator
from loopd.gate import gate
from loopd.inputs import Inputs
from loopd.metrics import Metrics
from loopd.pair import make_pair, wants_resample
from loopd.prune import prune_versions
from loopd.sample import draw, sample
from loopd.store import Store
from loopd.train import (
    ProgressHook,
    TrainingFailed,
    chosen_logps_fell,
    kill_orphan_trainers,
    library_versions,
    lineage,
    run_round,
)
from loopd.types import (
    AdapterVersion,
    Completion,
    Detection,
    EvalReport,
    GateDecision,
    GenerationRequest,
    Pair,
    Prompt,
    Sample,
    TrainResult,
)
from loopd.watch import watch_deployment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleReport:
    samples: int
    degenerate: int
    pairs: int


@dataclass(frozen=True)
class RoundReport:
    round_id: int
    status: str  # "promoted" | "rejected" | "blocked" | "failed" | "eval_failed" | "deploy_failed"
    candidate: AdapterVersion | None
    train: TrainResult | None
    decision: GateDecision | None
    fresh_pairs: int
    replay_pairs: int
    error: str | None = None


class Loop:
    def __init__(
        self,
        cfg: LoopdConfig,
        inputs: Inputs,
        *,
        backend: ServingBackend,
        store: Store,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ):
        self.cfg = cfg
        self.inputs = inputs
        self.backend = backend  # as given: the daemon's health check and the proxy use it
        self.store = store
        self.clock = clock
        self.metrics: Metrics | None = None
        # what the stages call: the same backend, its errors counted once metrics attach
        self.serving = ObservedBackend(backend, self._backend_error)
        self.registry = AdapterRegistry(cfg.adapters_dir)
        self.deployer = Deployer(
            self.serving,
            store,
            registry=self.registry,
            prefix=cfg.deploy.adapter_prefix,
            watch_samples=cfg.deploy.watch_samples,
        )
        self.cancel = threading.Event()  # set on shutdown: a running round is stopped
        self._blocked_logged: str | None = None
        self.heldout = self._heldout_evaluator()
        if metrics is not None:
            self.attach_metrics(metrics)

    def attach_metrics(self, metrics: Metrics) -> None:
        """Let the stages observe into ``metrics``: detection and training time, swaps,
        serving errors. Without it the loop runs the same, unobserved."""
        self.metrics = metrics
        self.deployer.metrics = metrics

    def _backend_error(self, error: Exception) -> None:
        if self.metrics is not None:
            self.metrics.backend_error(error)

    def recover(self) -> AdapterVersion | None:
        """After a (re)start: load the live adapter, drop half-written rounds' leftovers.

        Returns the live version (None: the bare base model serves).
        """
        live = self.deployer.restore()
        failpoints.reach("recover.restored")
        canary = canaries.open_canary(self.store)
        if canary is not None:  # resume it: the candidate answers its share again
            self.deployer.protected.add(self.deployer.serving_name(canary.version))
            self.deployer.load(canary.version)
        orphans = kill_orphan_trainers(self.registry.root)
        removed = self.registry.clean_staging()
        interrupted = self.store.interrupt_running_rounds()
        log.info(
            "recovered",
            extra={
                "live_version": live and live.version,
                "orphan_trainers_killed": orphans,
                "staging_removed": removed,
                "rounds_interrupted": interrupted,
            },
        )
        return live

    def reconfigure(self, cfg: LoopdConfig) -> None:
        """Run every later stage under ``cfg`` (a reload; ``loopd.reload`` vetted it).

        Held-out reports are cached per serving name; a new token limit or detector
        would compare old measurements with new ones, so the cache starts afresh.
        """
        old, self.cfg = self.cfg, cfg
        self.deployer.watch_samples = cfg.deploy.watch_samples
        if (old.serving.max_tokens, old.detector) != (cfg.serving.max_tokens, cfg.detector):
            self.heldout = self._heldout_evaluator()

    def _heldout_evaluator(self) -> HeldoutEvaluator:
        """Reports on the active held-out prompts; every measured answer is stored."""
        prompts = heldout.active_set(self.store, self.inputs.heldout, self.cfg.gate.heldout_size)
        return HeldoutEvaluator(
            self.serving,
            prompts,
            max_tokens=self.cfg.serving.max_tokens,
            detect=self.detect,
            on_report=self.store.record_heldout_answers,
        )

    def refresh_heldout(self, why: str, *, recycle: bool) -> bool:
        """Rotate ``gate.refresh_share`` of the held-out set; False if nothing changed."""
        if not self.cfg.gate.refresh_share:
            return False
        retired, added = heldout.refresh(
            self.store, self.inputs.heldout, self.cfg.gate.refresh_share, recycle=recycle
        )
        if not added:
            return False
        self.store.record_event("heldout_refreshed", retired=retired, added=added, why=why)
        log.info("held-out set refreshed", extra={"replaced": len(added), "why": why})
        self.heldout = self._heldout_evaluator()
        return True

    def detect(self, completion: Completion) -> Detection:
        started = time.perf_counter()
        detection = detector.detect(
            completion.text,
            token_ids=completion.token_ids,
            finish_reason=completion.finish_reason,
            config=self.cfg.detector,
        )
        if self.metrics is not None:
            self.metrics.detection_seconds.observe(time.perf_counter() - started)
        return detection

    # -- sample → detect → store → pair ------------------------------------------

    def sample_round(self) -> SampleReport:
        seed = self.cfg.sampling.seed + self.store.counts()["samples"]  # advances across restarts
        prompts = draw(
            self.inputs.train_prompts, self.cfg.sampling.prompts_per_round, random.Random(seed)
        )
        canary = canaries.open_canary(self.store)
        share = 0 if canary is None else canaries.canary_share(len(prompts), self.cfg)
        completions = self._sample(prompts[share:], self.deployer.live_name(), seed)
        if canary is not None:
            candidate = self.deployer.serving_name(canary.version)
            completions += self._sample(prompts[:share], candidate, seed)
        stored = self.store.add_samples([(p, c, self.detect(c)) for p, c in completions])
        failpoints.reach("sample.stored")
        degenerate = sum(s.detection.degenerate for s in stored)
        ids = [s.id for s in stored]
        log.info(
            "sampled",
            extra={"samples": len(stored), "degenerate": degenerate, "ids": ids[:1] + ids[-1:]},
        )
        report = SampleReport(samples=len(stored), degenerate=degenerate, pairs=self.pair_fresh())
        if canary is not None:
            self._judge_canary(canary)
        elif self.cfg.deploy.watch_samples:
            watch_deployment(self.deployer, self.cfg)
        return report

    def _sample(
        self, prompts: Sequence[Prompt], adapter: str | None, seed: int
    ) -> list[tuple[Prompt, Completion]]:
        if not prompts:
            return []
        return sample(
            self.serving,
            prompts,
            adapter=adapter,
            cfg=self.cfg.sampling,
            max_tokens=self.cfg.serving.max_tokens,
            seed=seed,
        )

    def pair_fresh(self) -> int:
        """Pair every stored degenerate sample not yet handled (also after a crash)."""
        samples = self.store.unpaired_degenerate()
        order = self.cfg.pairing.chosen_order
        resamples = self._resample([s for s in samples if wants_resample(s, order)])
        pairs = [
            make_pair(
                s,
                order=order,
                resamples=resamples.get(s.id, ()),
                detect=self.detect,
                min_truncated_chars=self.cfg.pairing.min_truncated_chars,
                truncated_eos=self.cfg.pairing.truncated_eos,
                truncate_at=self.cfg.pairing.truncate_at,
            )
            for s in samples
        ]
        made = [p for p in pairs if p is not None]
        self.store.add_pairs(made, handled_sample_ids=[s.id for s in samples])
        failpoints.reach("pair.stored")
        log.info(
            "paired",
            extra={"samples": len(samples), "pairs": len(made), "resampled": len(resamples)},
        )
        return len(made)

    def _resample(self, samples: Sequence[Sample]) -> dict[int, Sequence[Completion]]:
        """Resamples of every sample's prompt from the live adapter, in one batched call."""
        attempts = self.cfg.pairing.resample_attempts
        if not samples or attempts == 0:
            return {}
        seed = int(self.clock())
        requests = [
            GenerationRequest(
                prompt=s.prompt,
                max_tokens=self.cfg.serving.max_tokens,
                n=attempts,
                temperature=self.cfg.pairing.resample_temperature,
                seed=seed,
                adapter=self.deployer.live_name(),
            )
            for s in samples
        ]
        groups = self.serving.generate(requests)
        return {s.id: group for s, group in zip(samples, groups, strict=True)}

    # -- train → evaluate → gate → deploy ----------------------------------------

    def ready_to_train(self) -> bool:
        """Enough fresh pairs, and nothing that makes a round pointless (``readiness``)."""
        if self.store.count_fresh_pairs() < self.cfg.training.min_fresh_pairs:
            return False
        blocked = self.skip_reason()
        if blocked is not None and blocked != self._blocked_logged:
            log.warning("training round skipped", extra={"reason": blocked})
            self.store.record_event(
                "round_skipped", version=self.store.live_version(), reason=blocked
            )
        self._blocked_logged = blocked
        return blocked is None

    def skip_reason(self) -> str | None:
        """Why a round now would be thrown away (logged once by ``ready_to_train``)."""
        return self.canary_running() or self.training_blocked() or self._at_floor_after_refresh()

    def canary_running(self) -> str | None:
        return readiness.canary_running(canaries.open_canary(self.store))

    def training_blocked(self) -> str | None:
        return readiness.repeated_failure(
            self.store, self._attempt_key(), self.cfg.training, self.clock()
        )

    def live_at_floor(self) -> str | None:
        report = self.evaluate(self.deployer.live_name())
        return readiness.at_floor(report, self.cfg.gate.significance)

    def _at_floor_after_refresh(self) -> str | None:
        floor = self.live_at_floor()
        if floor and self.refresh_heldout("the live adapter is at the floor", recycle=False):
            floor = self.live_at_floor()  # new prompts may show loops the old ones hid
        return floor

    def _attempt_key(self) -> str:
        return readiness.attempt_key(self.store, self.cfg.training)

    def evaluate(self, adapter: str | None) -> EvalReport:
        """The held-out report of ``adapter`` (measured once per serving name)."""
        return self.heldout.report(adapter)

    def training_round(self, on_progress: ProgressHook | None = None) -> RoundReport:
        """One round, recorded from start to end: whatever goes wrong after it started
        (a bug, a full disk, a locked database) ends it as failed, never left running."""
        fresh = self.store.fresh_pairs(self.cfg.training.max_fresh_pairs)
        replay_count = round(len(fresh) * self.cfg.training.replay_fraction)
        replay = self.store.replay_pairs(replay_count, seed=self.cfg.training.seed + len(fresh))
        live = self.deployer.live()
        round_id = self.store.start_round(
            parent_version=_version_of(live), attempt_key=self._attempt_key()
        )
        try:
            report = self._train_gate_deploy(round_id, fresh, replay, live, on_progress)
        except Exception as error:
            log.exception("training round broke", extra={"round": round_id})
            return self._failed(round_id, "failed", error, len(fresh), len(replay))
        if self.cfg.training.keep_versions is not None:
            prune_versions(self.registry, self.store, keep=self.cfg.training.keep_versions)
        return report

    def _train_gate_deploy(
        self,
        round_id: int,
        fresh: list[Pair],
        replay: list[Pair],
        live: AdapterVersion | None,
        on_progress: ProgressHook | None,
    ) -> RoundReport:
        version = self._next_version()
        staging = self.registry.staging_dir(version)
        log.info(
            "training round", extra={"round": round_id, "fresh": len(fresh), "replay": len(replay)}
        )
        try:
            started = time.perf_counter()
            result = run_round(
                fresh + replay,
                base_model=self.inputs.base_model,
                init_adapter=None if live is None else live.path,
                out_dir=staging,
                cfg=self.cfg.training,
                on_progress=on_progress,
                cancel=self.cancel,
            )
            if self.metrics is not None:
                self.metrics.training_seconds.observe(time.perf_counter() - started)
            if result.metrics.get("misaligned_pairs"):
                log.warning("pairs misaligned with their prompt", extra=result.metrics)
            candidate = self._publish(staging, version, live, round_id, result, fresh, replay)
        except TrainingFailed as error:
            return self._failed(round_id, "failed", error, len(fresh), len(replay))
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone once published; else leftovers
        return self._gate_and_deploy(round_id, candidate, live, result, len(fresh), len(replay))

    def _next_version(self) -> int:
        on_disk = self.registry.versions_on_disk()
        return max(self.store.max_adapter_version(), max(on_disk, default=0)) + 1

    def _publish(
        self,
        staging: Path,
        version: int,
        live: AdapterVersion | None,
        round_id: int,
        result: TrainResult,
        fresh: Sequence[Pair],
        replay: Sequence[Pair],
    ) -> AdapterVersion:
        """Seal the adapter, then record it and mark its pairs trained together.

        The manifest carries the version's lineage: its parent and round, the ids of the
        pairs it was trained on (and their hash, to compare rounds at a glance), what
        training reported, and the library versions that trained it.
        """
        details = {k: v for k, v in asdict(result).items() if k != "adapter_dir"}
        details |= {"pairs": lineage(fresh, replay), "libraries": library_versions()}
        self._warn_if_chosen_falls(result, round_id)
        candidate = self.registry.publish(
            staging,
            version=version,
            parent=_version_of(live),
            round_id=round_id,
            details=details,
        )
        failpoints.reach("train.published")
        self.store.add_trained_version(candidate, pair_ids=[p.id for p in fresh], round_id=round_id)
        failpoints.reach("train.recorded")
        return candidate

    def _warn_if_chosen_falls(self, result: TrainResult, round_id: int) -> None:
        """DPO can lower the chosen answers' likelihood along with the rejected ones';
        round over round that drift is the known failure, so it is said aloud."""
        previous = self.store.last_trained_round()
        warning = chosen_logps_fell(previous and previous["train_metrics"], result.metrics)
        if warning is not None:
            log.warning("chosen answers' log-probs fell", extra={"round": round_id})
            self.store.record_event("chosen_logps_fell", round_id=round_id, detail=warning)

    def _gate_and_deploy(
        self,
        round_id: int,
        candidate: AdapterVersion,
        live: AdapterVersion | None,
        result: TrainResult,
        fresh: int,
        replay: int,
    ) -> RoundReport:
        name = self.deployer.serving_name(candidate)
        self.deployer.protected.add(name)
        try:
            decision = self._judge(name, candidate, live)
        except Exception as error:  # serving refused or failed mid-evaluation
            self._discard(name)
            return self._failed(round_id, "eval_failed", error, fresh, replay, candidate, result)
        finally:
            self.deployer.protected.discard(name)
        self.store.record_gate_decision(
            decision, round_id=round_id, candidate=candidate.version, live=_version_of(live)
        )
        log.info(
            "gate decided",
            extra={"round": round_id, "version": candidate.version, "promote": decision.promote},
        )
        failpoints.reach("gate.decided")
        fields = self._round_fields(candidate, result, fresh, replay)
        if decision.promote and self.cfg.gate.canary_share > 0:
            self.deployer.protected.add(name)  # stays loaded: it answers its share
            canaries.start_canary(self.store, candidate, round_id)
            self.store.finish_round(round_id, "canary", **fields, decision=decision.reason)
            return RoundReport(round_id, "canary", candidate, result, decision, fresh, replay)
        try:
            status, refusal = self._promote_or_discard(candidate, decision.promote, round_id)
        except DeployFailed as error:
            return self._failed(round_id, "deploy_failed", error, fresh, replay, candidate, result)
        self.store.finish_round(round_id, status, **fields, decision=refusal or decision.reason)
        return RoundReport(round_id, status, candidate, result, decision, fresh, replay)

    def _promote_or_discard(
        self, candidate: AdapterVersion, promote: bool, round_id: int
    ) -> tuple[str, str | None]:
        """Deploy or unload the candidate: the round's status, and a pin's refusal if any.

        Raises ``DeployFailed`` when serving could not take it (the live one still serves).
        """
        name = self.deployer.serving_name(candidate)
        if not promote:
            self._discard(name)
            return "rejected", None
        try:
            self.deployer.deploy(candidate, round_id=round_id)
        except DeployRefused as refused:
            self._discard(name)
            return "blocked", f"promotion blocked: {refused}"
        self.refresh_heldout(f"{candidate.name} was selected on it", recycle=True)
        return "promoted", None

    def _judge_canary(self, canary: canaries.Canary) -> None:
        """Decide an open canary once its candidate answered enough; then end its round."""
        name = self.deployer.serving_name(canary.version)
        if self.store.live_version() != canary.parent:
            reason = "canary abandoned: the live adapter changed while it ran"
            canaries.end(self.store, canary, "abandoned", reason)
            return self._end_canary(canary, "rejected", reason)
        judged = canaries.judge_canary(
            self.store, canary, candidate=name, live=self.deployer.live_name(), cfg=self.cfg
        )
        if judged is None:
            return None
        try:
            status, refusal = self._promote_or_discard(
                canary.version, not judged.rollback, canary.round_id
            )
        except DeployFailed as error:
            status, refusal = "deploy_failed", str(error)
        canaries.record_verdict(self.store, canary, judged, status)
        return self._end_canary(canary, status, refusal or f"canary {judged.reason}")

    def _end_canary(self, canary: canaries.Canary, status: str, reason: str) -> None:
        self.deployer.protected.discard(self.deployer.serving_name(canary.version))
        if status != "promoted":
            self._discard(self.deployer.serving_name(canary.version))
        self.store.finish_round(canary.round_id, status, decision=reason)
        log.info("canary ended", extra={"round": canary.round_id, "status": status})

    def _judge(
        self, name: str, candidate: AdapterVersion, live: AdapterVersion | None
    ) -> GateDecision:
        """Load the candidate beside the live adapter and gate it on the held-out set."""
        log.info("evaluating candidate", extra={"version": candidate.version})
        self.deployer.load(candidate)  # checksums and registry confinement first
        live_name = self.deployer.serving_name(live)
        live_report = self.evaluate(live_name)
        failpoints.reach("evaluate.measured")
        likelihood = self.heldout.likelihood(live_name, name)
        return gate(self.evaluate(name), live_report, self.cfg.gate, likelihood)

    def _discard(self, name: str) -> None:
        """Best effort: a candidate that failed evaluation must not stay loaded."""
        if name in self.serving.adapters():
            try:
                self.serving.unload_adapter(name)
            except Exception:
                log.exception("could not unload a failed candidate", extra={"adapter": name})

    def _failed(
        self,
        round_id: int,
        status: str,
        error: Exception,
        fresh: int,
        replay: int,
        candidate: AdapterVersion | None = None,
        result: TrainResult | None = None,
    ) -> RoundReport:
        log.error(
            "training round failed",
            extra={"round": round_id, "status": status, "error": str(error)},
        )
        self.store.finish_round(
            round_id,
            status,
            error=str(error),
            error_kind=getattr(error, "kind", status),
            **self._round_fields(candidate, result, fresh, replay),
        )
        self.store.record_event(status, round_id=round_id, error=str(error))
        return RoundReport(round_id, status, candidate, result, None, fresh, replay, str(error))

    @staticmethod
    def _round_fields(
        candidate: AdapterVersion | None, result: TrainResult | None, fresh: int, replay: int
    ) -> dict[str, object]:
        fields: dict[str, object] = {"fresh_pairs": fresh, "replay_pairs": replay}
        if candidate is not None:
            fields["candidate_version"] = candidate.version
        if result is not None:
            fields |= {
                "dropped_overlong": result.dropped_overlong,
                "train_seconds": result.seconds,
                "final_loss": result.final_loss,
                "train_metrics": result.metrics,
            }
        return fields


def _version_of(adapter: AdapterVersion | None) -> int | None:
    return None if adapter is None else adapter.version
