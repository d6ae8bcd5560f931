"""The detector's thresholds: the daemon's ``[detector]`` section, declared once."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loopd.detect.runs import PROBE


class DetectorConfig(BaseModel):
    """Thresholds of the degeneration detector (the daemon's ``[detector]`` section).

    Lengths ending in ``_chars`` count *normalized* characters -- letters and digits;
    spacing and punctuation are not counted -- so jitter does not change them (a unit of
    bare punctuation counts its characters, runs of spaces as one).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_repeats: float = Field(
        3.0,
        description="A loop must repeat its unit at least this many times back to back "
        "(a run cut by the token limit counts its partial last unit).",
    )
    min_loop_chars: int = Field(
        120,
        description="A loop must cover at least this many normalized characters (letters "
        "and digits), so 'very very very' or three short identical lines never fire.",
    )
    min_symbol_loop_chars: int = Field(
        600,
        description="Minimum loop length when the unit has no letters: digits ('0, 0, 0') or "
        "punctuation spread over words or lines ('-----' lines). Higher, because separator "
        "lines and zero-filled rows are legitimate in small amounts. One unbroken run of "
        "punctuation uses min_symbol_run_chars.",
    )
    min_symbol_run_chars: int = Field(
        120,
        description="One unbroken run of punctuation ('!!!!', '12:12:12:') must cover this "
        "many characters; the short-loop floors never lower it (a separator line is one).",
    )
    min_symbol_repeats: float = Field(
        8.0,
        description="...or, for the same units, at least this many repeats over "
        "min_loop_chars: '<!--' on every line, repeated code fences, '1000000, 1000000'. "
        "Five separator lines in a row stay legitimate.",
    )
    short_loop_share: float = Field(
        0.4,
        description="Short outputs: min_loop_chars and min_loop_tokens fall to this share "
        "of the output's own length when that is lower, so the loops of a max_tokens=48 "
        "answer are seen. The output's length is the budget the request used: a loop cut "
        "by max_tokens fills it.",
    )
    min_short_loop_chars: int = Field(
        48, description="...but not below this many normalized characters."
    )
    min_short_loop_tokens: int = Field(16, description="...nor below this many tokens.")
    short_loop_repeats: float = Field(
        4.0,
        description="In a short output, a loop that repeats at least this many times needs "
        "only min_many_repeats_chars ('1. Blue jay 2. Blue jay 3. Blue jay 4. Blue jay'); "
        "'Thank you! Thank you! Thank you!' stays legitimate.",
    )
    many_repeats: float = Field(
        4.0,
        description="At any output length, a loop that repeats at least this many times "
        "needs only min_many_repeats_chars ('12. Ash 13. Ash 14. Ash 15. Ash' in a long "
        "list; the real-output corpus's labelling rule: 4 repeats over ~30 characters).",
    )
    min_many_repeats_chars: int = Field(
        20,
        description="Normalized characters such a loop of many repeats must cover (text "
        "rules only; token cycles that short are table separators), and the items of an "
        "item set ('Sun, Moon, Star' cycling in a short answer).",
    )
    cut_loop_repeats: float = Field(
        2.5,
        description="A loop the token limit cut (finish reason in limit_finish_reasons) "
        "that runs to the very end needs only this many repeats: the budget stopped it "
        "during its third ('| Cucumbers | Asia |' twice and most of a third at "
        "max_tokens = 128). A loop followed by anything else keeps min_repeats.",
    )
    limit_finish_reasons: tuple[str, ...] = Field(
        ("length",),
        description="Finish reasons that mean the token limit cut the output.",
    )
    item_sets: bool = Field(
        True,
        description="Also catch tails that keep drawing from a few items in any order "
        "('Austria, Germany, Austria, Austria, Germany, ...'; rule item_set).",
    )
    min_items: int = Field(8, description="item_set: at least this many items in the stretch.")
    max_distinct_items: int = Field(
        8, description="item_set: drawn from at most this many distinct items..."
    )
    max_distinct_share: float = Field(
        0.3,
        description="...and at most this share of the items distinct (each item seen three "
        "to four times; the real-output corpus's labelling rule), so tables, logs and lists "
        "of distinct entries never fire.",
    )
    min_item_letters: int = Field(
        2,
        description="item_set: an item needs this many letters; zero rows, separators and "
        "braces are not items.",
    )
    max_period_chars: int = Field(
        2000,
        description="Longest unit searched for, in normalized characters (~a paragraph "
        "and a half). Longer periods cost more time per completion.",
    )
    max_recovery_chars: int = Field(
        300,
        description="A loop may stop this many normalized characters before the end (the "
        "model escaped and wrote a short ending) and still count.",
    )
    max_recovery_share: float = Field(
        0.5,
        description="...but only if that recovery is shorter than this share of the loop "
        "itself; a long recovery means the model really got out.",
    )
    near_repeats: bool = Field(
        True,
        description="Also catch loops whose repetitions differ only in punctuation, "
        "casing or spacing (rule near_cycle).",
    )
    counters: bool = Field(
        True,
        description="Also catch loops whose repetitions differ only in a list counter (a "
        "number leading a line, ' 39. ' inside one, or one closing it after '-', ':', '=' or "
        "'#'), e.g. '39. Violin' / '40. Violin' or '7. Bluefin-27' / '8. Bluefin-28' "
        "(rule counter_cycle; units up to 400 normalized characters).",
    )
    min_unit_letters: int = Field(
        3,
        description="A counter_cycle unit must keep at least this many letters once the "
        "numbers are dropped, so numeric tables never count as counter loops.",
    )
    min_loop_tokens: int = Field(
        48,
        description="Token pass: an exact token cycle must cover at least this many tokens.",
    )
    max_period_tokens: int = Field(
        512, description="Token pass: longest unit searched for, in tokens."
    )
    max_recovery_tokens: int = Field(
        0,
        description="Token pass: a loop may stop this many tokens before the end and "
        "still count (same share rule as max_recovery_share). 0: the token pass (and the "
        "streaming watcher) look at the very end only; the text rules find loops followed "
        "by a recovery, and a stream that is looping is looping at its end.",
    )
    repetition_finish_reasons: tuple[str, ...] = Field(
        ("repetition",),
        description="Finish reasons that mean the server already stopped a loop (vLLM's "
        "repetition detection); such outputs are degenerate by definition.",
    )
    watch_check_every: int = Field(
        16,
        description="LoopWatcher checks the tail every this many tokens (for text pieces: "
        "exact loops every 4x this many characters, everything every 1,024); a loop is "
        "reported at most this late. 16 keeps the watcher under 1 µs per token on a busy "
        "2-core machine, where 8 cost ~0.9-1.4 µs, for ~4 more tokens per stopped loop.",
    )
    watch_window_tokens: int = Field(
        4096,
        description="LoopWatcher keeps this many recent tokens; must hold min_repeats "
        "periods of max_period_tokens plus the recovery.",
    )
    watch_window_chars: int = Field(
        12000,
        description="LoopWatcher keeps this many recent characters when fed text pieces.",
    )

    @field_validator(
        "min_repeats",
        "short_loop_repeats",
        "many_repeats",
        "cut_loop_repeats",
        "min_symbol_repeats",
    )
    @classmethod
    def _repeats_at_least_two(cls, v: float) -> float:
        if v < 2:
            raise ValueError(f"got {v}: that would call any repeated phrase a loop; set 2 or more")
        return v

    @field_validator(
        "min_loop_chars",
        "min_symbol_loop_chars",
        "min_symbol_run_chars",
        "min_short_loop_chars",
        "min_short_loop_tokens",
        "min_many_repeats_chars",
        "min_items",
        "max_distinct_items",
        "max_period_chars",
        "min_loop_tokens",
        "max_period_tokens",
        "watch_check_every",
        "watch_window_tokens",
        "watch_window_chars",
    )
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"got {v}; set a positive integer")
        return v

    @field_validator(
        "max_recovery_chars",
        "max_recovery_tokens",
        "min_unit_letters",
        "min_item_letters",
    )
    @classmethod
    def _not_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"got {v}; set 0 or more (0 disables it)")
        return v

    @field_validator("max_recovery_share", "short_loop_share", "max_distinct_share")
    @classmethod
    def _share(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"got {v}; set a share between 0 and 1")
        return v

    @model_validator(mode="after")
    def _window_holds_a_loop(self) -> DetectorConfig:
        need = (
            math.ceil(self.min_repeats * self.max_period_tokens) + self.max_recovery_tokens + PROBE
        )
        if self.watch_window_tokens < need:
            raise ValueError(
                f"watch_window_tokens={self.watch_window_tokens} cannot hold a loop of "
                f"max_period_tokens={self.max_period_tokens}; raise it to {need} or lower "
                "max_period_tokens"
            )
        need = math.ceil(self.min_repeats * self.max_period_chars) + self.max_recovery_chars + PROBE
        if self.watch_window_chars < need:
            raise ValueError(
                f"watch_window_chars={self.watch_window_chars} cannot hold a loop of "
                f"max_period_chars={self.max_period_chars}; raise it to {need} or lower "
                "max_period_chars"
            )
        return self


DEFAULT_CONFIG = DetectorConfig()
