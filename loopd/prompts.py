"""Prompts, from file to token ids: one module for serving *and* training.

A pair trains only what serving produced if both sides render and tokenize a prompt the
same way, so every stage that needs prompt text or ids comes here:

- ``read_prompts``: prompt files are JSON Lines, one object per prompt: ``id``; either
  ``prompt`` (text) or ``messages`` (a chat list); optional ``reference`` and ``kind``;
  unknown fields ignored. A bad line is reported with its file and line number, not
  skipped: a held-out set with a silently missing prompt would change what the gate
  measures.
- ``render_prompt``: plain prompts pass through; chat prompts go through the model's chat
  template with the assistant turn opened.
- ``encode_prompt``: the ids the model sees. A chat template writes its own special
  tokens; a tokenizer that also prepends BOS would then give the model a doubled BOS it
  never saw in training (the template's text already starts with it), so special tokens
  are added only when the rendered text does not already carry them.
- ``end_token_ids``: every id that ends a generation. Models may list several in their
  generation config (Llama 3: end of text, end of turn, end of message); the tokenizer's
  ``eos_token`` alone misses them.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import GenerationConfig, PreTrainedTokenizerBase

from loopd.types import Prompt


class PromptFileError(ValueError):
    """A prompt file line that is not a valid prompt; names the file, line and fix."""


def read_prompts(path: Path) -> list[Prompt]:
    prompts = []
    number = 0
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    prompts.append(_parse_prompt(line, where=f"{path}:{number}"))
    except UnicodeDecodeError as error:
        where = f"after line {number}" if number else "at the start"
        raise PromptFileError(f"{path}: not UTF-8 text {where} ({error.reason})") from None
    if not prompts:
        raise PromptFileError(f"{path}: holds no prompts; add JSON Lines with 'id' and 'prompt'")
    return prompts


def _parse_prompt(line: str, *, where: str) -> Prompt:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise PromptFileError(f"{where}: not JSON ({error.msg})") from None
    except (RecursionError, ValueError) as error:  # nested too deep, a number too long
        raise PromptFileError(f"{where}: not usable JSON ({type(error).__name__})") from None
    if not isinstance(row, dict) or "id" not in row:
        raise PromptFileError(f"{where}: each line must be an object with an 'id'")
    if not isinstance(row["id"], str | int) or isinstance(row["id"], bool) or row["id"] == "":
        raise PromptFileError(f"{where}: 'id' must be a non-empty string (or an integer)")
    if ("prompt" in row) == ("messages" in row):
        raise PromptFileError(f"{where}: give exactly one of 'prompt' (text) or 'messages' (chat)")
    if "prompt" in row and not isinstance(row["prompt"], str):
        raise PromptFileError(f"{where}: 'prompt' must be a string")
    messages = row.get("messages")
    if "messages" in row and not _is_chat(messages):
        raise PromptFileError(
            f"{where}: 'messages' must be a non-empty list of {{role, content}} objects with "
            "string values"
        )
    for key in ("reference", "kind"):
        if row.get(key) is not None and not isinstance(row[key], str):
            raise PromptFileError(f"{where}: '{key}' must be a string when given")
    if not _encodable(row, messages):
        raise PromptFileError(f"{where}: holds an unpaired UTF-16 surrogate escape (\\ud8xx)")
    return Prompt(
        id=str(row["id"]),
        text=row.get("prompt"),
        messages=tuple(messages) if messages is not None else None,
        reference=row.get("reference"),
        kind=row.get("kind"),
    )


def _is_chat(messages: object) -> bool:
    return (
        isinstance(messages, list)
        and bool(messages)
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in messages
        )
    )


def _encodable(row: dict, messages: list | None) -> bool:
    """JSON's ``\\ud800`` escapes decode to text no tokenizer or database can encode."""
    fields = [str(row["id"]), *(row.get(k) or "" for k in ("prompt", "reference", "kind"))]
    fields += [m[key] for m in messages or () for key in ("role", "content")]
    try:
        for text in fields:
            text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> str:
    """Plain prompts pass through; chat prompts go through the model's chat template."""
    if prompt.messages is None:
        return prompt.text or ""
    if tokenizer.chat_template is None:
        raise ValueError(
            f"prompt {prompt.id!r} has 'messages' but the model has no chat template; "
            "give it as plain 'prompt' text instead"
        )
    return tokenizer.apply_chat_template(
        list(prompt.messages), tokenize=False, add_generation_prompt=True
    )


def adds_special_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> bool:
    """Whether tokenizing ``text`` should add the tokenizer's special tokens (BOS).

    No when the text already opens with the BOS token, as chat templates that write it
    themselves do: adding it again would feed the model a doubled BOS.
    """
    bos = tokenizer.bos_token
    return not (bos and text.startswith(bos))


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of an already rendered prompt (or prompt + answer), BOS at most once."""
    add = adds_special_tokens(tokenizer, text)
    return tokenizer(text, add_special_tokens=add)["input_ids"]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> list[int]:
    return encode_text(tokenizer, render_prompt(tokenizer, prompt))


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading ids two encodings share: where a prompt's ids end inside prompt +
    answer (BPE may merge across the boundary, so not always at ``len(prompt)``)."""
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return min(len(a), len(b))


def end_token_ids(tokenizer: PreTrainedTokenizerBase, model_dir: Path | None) -> list[int]:
    """Every id that ends a generation: the generation config's, then the tokenizer's.

    The first is the one training appends to an answer that ended: the tokenizer's own
    EOS when the generation config lists it, since that is what its chat template closes
    a turn with.
    """
    listed: list[int] = []
    if model_dir is not None and (model_dir / "generation_config.json").is_file():
        configured = GenerationConfig.from_pretrained(model_dir).eos_token_id
        listed = [configured] if isinstance(configured, int) else list(configured or [])
    own = tokenizer.eos_token_id
    if own is not None and (own in listed or not listed):
        listed = [own, *(i for i in listed if i != own)]
    return listed
