"""Rows to loopd's dataclasses and back: the only place that knows column encodings."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loopd.types import AdapterVersion, Completion, Detection, EvalReport, Pair, Prompt, Sample


def sample_row(completion: Completion, detection: Detection, now: float) -> dict[str, Any]:
    row = asdict(completion) | asdict(detection)
    row["token_ids"] = (
        json.dumps(list(completion.token_ids)) if completion.token_ids is not None else None
    )
    row["stop_reason"] = None if completion.stop_reason is None else str(completion.stop_reason)
    if completion.token_logprobs is not None:
        row["token_logprobs"] = json.dumps(list(completion.token_logprobs))
    row["degenerate"] = int(detection.degenerate)
    return row | {"created_at": now, "paired": 0}


def prompt_from_row(row: dict[str, Any]) -> Prompt:
    messages = json.loads(row["p_messages"]) if row["p_messages"] else None
    return Prompt(
        id=row["prompt_id"],
        text=row["p_text"],
        messages=tuple(messages) if messages else None,
        reference=row["p_reference"],
        kind=row["p_kind"],
    )


def sample_from_row(row: dict[str, Any]) -> Sample:
    completion = Completion(
        prompt_id=row["prompt_id"],
        text=row["text"],
        finish_reason=row["finish_reason"],
        token_ids=tuple_or_none(row["token_ids"]),
        stop_reason=row["stop_reason"],
        adapter=row["adapter"],
        temperature=row["temperature"],
        seed=row["seed"],
        latency_s=row["latency_s"],
        token_logprobs=tuple_or_none(row["token_logprobs"]),
    )
    detection = Detection(
        degenerate=bool(row["degenerate"]),
        rule=row["rule"],
        score=row["score"],
        loop_start=row["loop_start"],
        loop_start_token=row["loop_start_token"],
        period=row["period"],
        repeats=row["repeats"],
        loop_fraction=row["loop_fraction"],
    )
    return Sample(row["id"], prompt_from_row(row), completion, detection, row["created_at"])


def pair_row(pair: Pair, now: float) -> dict[str, Any]:
    return {
        "prompt_id": pair.prompt.id,
        "sample_id": pair.sample_id,
        "chosen": pair.chosen,
        "rejected": pair.rejected,
        "chosen_source": pair.chosen_source,
        "chosen_eos": int(pair.chosen_eos),
        "rejected_eos": int(pair.rejected_eos),
        "loop_start": pair.loop_start,
        "trained_round": None,
        "created_at": now,
    }


def pair_from_row(row: dict[str, Any]) -> Pair:
    return Pair(
        prompt=prompt_from_row(row),
        chosen=row["chosen"],
        rejected=row["rejected"],
        chosen_source=row["chosen_source"],
        sample_id=row["sample_id"],
        id=row["id"],
        chosen_eos=bool(row["chosen_eos"]),
        rejected_eos=bool(row["rejected_eos"]),
        loop_start=row["loop_start"],
    )


def version_from_row(row: dict[str, Any]) -> AdapterVersion:
    return AdapterVersion(
        version=row["version"],
        path=Path(row["path"]),
        parent=row["parent"],
        created_at=row["created_at"],
        round_id=row["round_id"],
    )


def tuple_or_none(encoded: str | None) -> tuple | None:
    return None if encoded is None else tuple(json.loads(encoded))


def messages_column(prompt: Prompt) -> str | None:
    return json.dumps(prompt.messages) if prompt.messages else None


def prompt_digest(words: dict[str, str | None]) -> str:
    return hashlib.sha256(json.dumps(words, sort_keys=True).encode()).hexdigest()[:12]


def version_row(version: AdapterVersion) -> dict[str, Any]:
    return asdict(version) | {"path": str(version.path)}


def decision_from_row(row: dict[str, Any]) -> dict[str, Any]:
    decoded = {k: json.loads(row[k]) if row[k] else None for k in ("checks", "candidate", "live")}
    return {**row, **decoded, "promote": bool(row["promote"])}


def eval_summary(report: EvalReport) -> dict[str, Any]:
    """An evaluation without its per-prompt answers, as events and decisions keep it."""
    return {k: v for k, v in asdict(report).items() if k != "answers"}
