"""The public degeneration baselines loopd's detector is measured against.

Each takes what a served completion offers (text, token ids) and returns a score; a
threshold turns it into a verdict. They are written to be faithful and fast, not clever.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

GZIP_THRESHOLD = 2.4  # Whisper's compression_ratio_threshold


def gzip_ratio(text: str) -> float:
    """Whisper's compression ratio: UTF-8 bytes over zlib-compressed bytes."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def repeated_4gram_share(text: str) -> float:
    """seq-rep-4: the share of word 4-grams that already occurred earlier in the text."""
    words = text.split()
    grams = list(zip(words, words[1:], words[2:], words[3:], strict=False))
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def vllm_tail_cycle(
    token_ids: Sequence[int],
    *,
    min_pattern_size: int = 1,
    max_pattern_size: int = 128,
    min_count: int = 4,
) -> bool:
    """vLLM's ``check_sequence_repetition`` (v1 scheduler): does the tail consist of
    ``min_count`` exact back-to-back copies of its last ``pattern_len`` tokens, for some
    pattern length in [min_pattern_size, max_pattern_size]? Reimplemented from
    vllm/v1/core/sched/utils.py so the baseline runs without vLLM installed.
    """
    n = len(token_ids)
    for pattern_len in range(max(1, min_pattern_size), max_pattern_size + 1):
        if pattern_len * min_count > n:
            return False
        if _has_repeating_pattern(token_ids, pattern_len, min_count):
            return True
    return False


def _has_repeating_pattern(token_ids: Sequence[int], pattern_len: int, min_count: int) -> bool:
    for i in range(1, pattern_len + 1):
        target = token_ids[-i]
        for m in range(1, min_count):
            if token_ids[-(pattern_len * m + i)] != target:
                return False
    return True
