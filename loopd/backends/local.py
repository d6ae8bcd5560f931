"""In-process serving: transformers + PEFT, the embedded default on a CPU machine.

One base model stays in memory; LoRA adapters are loaded beside it under their serving
names and chosen per request, which is what vLLM does with ``model=<lora_name>``. A lock
serializes generation and adapter changes, so a swap can never land in the middle of a
batch: a request either runs wholly on the old adapter or wholly on the new one.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from loopd.backends import AdapterLoadError
from loopd.prompts import (
    common_prefix,
    encode_prompt,
    encode_text,
    end_token_ids,
    render_prompt,
)
from loopd.types import Completion, GenerationRequest, Prompt

log = logging.getLogger(__name__)


class LocalBackend:
    """transformers + PEFT in this process; satisfies ``ServingBackend``."""

    def __init__(self, base: Path, *, batch_size: int = 32, threads: int | None = None):
        if threads is not None:
            torch.set_num_threads(threads)
        self.base_path = base
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(base, padding_side="left")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        self.end_ids = end_token_ids(self.tokenizer, base)
        self._peft: PeftModel | None = None
        self._lock = threading.RLock()

    # -- adapters --------------------------------------------------------------

    def load_adapter(self, name: str, path: Path) -> None:
        with self._lock:
            if name in self.adapters():
                raise AdapterLoadError(f"adapter {name!r} is already loaded; use a new name")
            try:
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(self.model, path, adapter_name=name)
                    self._peft.eval()
                else:
                    self._peft.load_adapter(path, adapter_name=name)
            except Exception as error:  # PEFT raises many types for a bad folder
                raise AdapterLoadError(
                    f"cannot load adapter {name!r} from {path}: {error}"
                ) from error
        log.info("adapter loaded", extra={"adapter": name, "path": str(path)})

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            if name not in self.adapters():
                raise KeyError(f"adapter {name!r} is not loaded")
            if len(self.adapters()) == 1:
                self.model = self._peft.unload()  # restores the bare base model
                self._peft = None
            else:
                self._peft.delete_adapter(name)
        log.info("adapter unloaded", extra={"adapter": name})

    def adapters(self) -> list[str]:
        return [] if self._peft is None else list(self._peft.peft_config)

    def health(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release beyond memory; present for the ``ServingBackend`` seam."""

    # -- generation ------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """Batch requests that share sampling settings; keep the caller's order.

        Within a group, prompts are batched by length: left padding costs attention over
        every pad position at every step, so a long prompt must not widen a batch of
        short ones.
        """
        prompt_ids = [encode_prompt(self.tokenizer, r.prompt) for r in requests]
        results: list[list[Completion]] = [[] for _ in requests]
        order = sorted(
            range(len(requests)), key=lambda i: (_batch_key(requests[i]), len(prompt_ids[i]))
        )
        for _, group in itertools.groupby(order, key=lambda i: _batch_key(requests[i])):
            indices = list(group)
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                batch = [(requests[i], prompt_ids[i]) for i in chunk]
                for index, completions in zip(chunk, self._generate_batch(batch), strict=True):
                    results[index] = completions
        return results

    def _generate_batch(
        self, batch: list[tuple[GenerationRequest, list[int]]]
    ) -> list[list[Completion]]:
        first = batch[0][0]
        prompts = [ids for _, ids in batch]
        encoded = self.tokenizer.pad(
            {"input_ids": prompts}, padding=True, padding_side="left", return_tensors="pt"
        )
        started = time.perf_counter()
        with self._lock, self._adapter(first.adapter), torch.inference_mode():
            if first.seed is not None:
                torch.manual_seed(first.seed)
            output = self._generator().generate(
                **encoded, **self._generation_args(first), num_return_sequences=first.n
            )
        latency = (time.perf_counter() - started) / len(batch)
        new_tokens = output[:, encoded["input_ids"].shape[1] :]
        rows = [
            self._completion(batch[i // first.n][0], prompts[i // first.n], tokens, latency)
            for i, tokens in enumerate(new_tokens)
        ]
        return [rows[i * first.n : (i + 1) * first.n] for i in range(len(batch))]

    def _generation_args(self, request: GenerationRequest) -> dict[str, object]:
        sampling = request.temperature > 0
        return {
            "max_new_tokens": request.max_tokens,
            "do_sample": sampling,
            "temperature": request.temperature if sampling else None,
            "top_p": request.top_p if sampling else None,
            "top_k": None,
            "repetition_penalty": request.repetition_penalty,
            "no_repeat_ngram_size": request.no_repeat_ngram_size,
            "eos_token_id": self.end_ids,
            "pad_token_id": self.tokenizer.pad_token_id,
        }

    def answer_logprobs(
        self, items: Sequence[tuple[Prompt, str]], *, adapter: str | None
    ) -> list[float]:
        """Mean log-probability per token of each answer after its prompt, under ``adapter``.

        Teacher forcing, one sequence at a time: how likely the adapter finds a given
        answer (a reference, or another adapter's clean answer), which falls when an
        adapter forgets how to answer even where it no longer loops.
        """
        scores = []
        with self._lock, self._adapter(adapter), torch.inference_mode():
            for prompt, answer in items:
                head = encode_prompt(self.tokenizer, prompt)
                text = render_prompt(self.tokenizer, prompt) + answer
                ids = [*encode_text(self.tokenizer, text), self.end_ids[0]]
                start = max(1, min(common_prefix(head, ids), len(ids) - 1))
                logits = self._generator()(torch.tensor([ids])).logits[0, start - 1 : -1]
                picked = torch.log_softmax(logits.float(), -1).gather(
                    1, torch.tensor(ids[start:]).unsqueeze(1)
                )
                scores.append(picked.mean().item())
        return scores

    def _generator(self) -> torch.nn.Module:
        return self._peft if self._peft is not None else self.model

    @contextlib.contextmanager
    def _adapter(self, name: str | None) -> Iterator[None]:
        """Make ``name`` the active adapter for one batch; None means the bare base."""
        if name is None:
            with (
                self._peft.disable_adapter() if self._peft is not None else contextlib.nullcontext()
            ):
                yield
            return
        if name not in self.adapters():
            raise KeyError(f"adapter {name!r} is not loaded (loaded: {self.adapters()})")
        self._peft.set_adapter(name)
        yield

    def _completion(
        self, request: GenerationRequest, prompt_ids: list[int], ids: torch.Tensor, latency: float
    ) -> Completion:
        tokens = ids.tolist()
        end = next((i for i, t in enumerate(tokens) if t in self.end_ids), None)
        stop_reason = None if end is None else tokens[end]
        if end is not None:
            tokens = tokens[:end]
        return Completion(
            prompt_id=request.prompt.id,
            text=self._continuation(prompt_ids, tokens),
            finish_reason="length" if end is None else "stop",
            token_ids=tuple(tokens),
            stop_reason=stop_reason,
            adapter=request.adapter,
            temperature=request.temperature,
            seed=request.seed,
            latency_s=latency,
        )

    def _continuation(self, prompt_ids: list[int], tokens: list[int]) -> str:
        """The text the tokens add after the prompt, leading whitespace included.

        Decoding the new tokens alone loses the space a SentencePiece-style decoder
        strips from a first token; decoding prompt+tokens and cutting the prompt off is
        what vLLM does, so both backends return the same text and ``prompt + text``
        re-tokenizes to the same ids, which DPO training relies on.
        """
        head = self.tokenizer.decode(prompt_ids, skip_special_tokens=True)
        whole = self.tokenizer.decode(prompt_ids + tokens, skip_special_tokens=True)
        return whole[len(head) :]


def _batch_key(request: GenerationRequest) -> tuple:
    return (
        request.adapter or "",
        request.temperature,
        request.top_p,
        request.max_tokens,
        request.n,
        -1 if request.seed is None else request.seed,
        request.repetition_penalty,
        request.no_repeat_ngram_size,
    )
