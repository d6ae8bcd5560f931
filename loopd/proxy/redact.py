"""What is stored of production traffic: prompts and answers with configured patterns
(``proxy.redact_patterns``: e-mail addresses, keys, account numbers) replaced before they
reach the database, the pairs or the trainer. A prompt's id is taken from its redacted
words, so not even a digest of a redacted secret is kept. Logs never carry prompt text.
"""

from __future__ import annotations

import dataclasses
import re

from loopd.proxy.calls import prompt_id
from loopd.types import Completion, Prompt


class Redactor:
    def __init__(self, patterns: list[str], replacement: str):
        self._pattern = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
        self._replacement = replacement

    def text(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(self._replacement.replace("\\", "\\\\"), text)

    def prompt(self, prompt: Prompt) -> Prompt:
        if self._pattern is None:
            return prompt
        if prompt.messages is not None:
            messages = tuple(m | {"content": self.text(m["content"])} for m in prompt.messages)
            changed = dataclasses.replace(prompt, messages=messages)
        else:
            changed = dataclasses.replace(prompt, text=self.text(prompt.text or ""))
        if changed == prompt or not prompt.id.startswith("proxy-"):
            return changed  # a caller's own prompt id names no words: it stays
        return dataclasses.replace(changed, id=prompt_id(changed.text, changed.messages))

    def sample(self, prompt: Prompt, completion: Completion) -> tuple[Prompt, Completion]:
        """Both sides redacted; the completion points at the redacted prompt's id."""
        kept = self.prompt(prompt)
        text = self.text(completion.text)
        ids = completion.token_ids if text == completion.text else None  # no longer its ids
        return kept, dataclasses.replace(completion, prompt_id=kept.id, text=text, token_ids=ids)
