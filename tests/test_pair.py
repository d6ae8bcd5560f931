"""Pairing: chosen by configured preference, rejected is always the model's own loop."""

from __future__ import annotations

from loopd.pair import cut_before_loop, make_pair
from loopd.types import Completion, Detection, Prompt, Sample

LOOPED = " The cat sat. It was warm warm warm warm warm"
START = LOOPED.index("warm warm")


def sample(reference: str | None) -> Sample:
    prompt = Prompt(id="p", text="Story:", reference=reference)
    detection = Detection(degenerate=True, rule="tail_cycle", loop_start=START, period=5)
    return Sample(7, prompt, Completion("p", LOOPED, "length"), detection, 0.0)


def no_resample(prompt: Prompt) -> list[Completion]:
    return []


def clean(completion: Completion) -> Detection:
    return Detection(degenerate=False)


def test_cut_closes_at_the_last_sentence_boundary() -> None:
    assert cut_before_loop(LOOPED, START, min_chars=5) == " The cat sat."
    assert cut_before_loop("one two three four", 14, min_chars=3) == "one two three"
    assert cut_before_loop(" ab ab ab", 1, min_chars=5) is None


def test_reference_comes_first_and_keeps_the_models_leading_space() -> None:
    pair = make_pair(
        sample("The cat sat. It was warm."),
        order=["reference", "truncate"],
        resample=no_resample,
        detect=clean,
        min_truncated_chars=5,
    )
    assert pair.chosen_source == "reference"
    assert pair.chosen == " The cat sat. It was warm."
    assert pair.rejected == LOOPED and pair.sample_id == 7


def test_falls_through_to_a_clean_resample_then_truncation() -> None:
    def resample(prompt: Prompt) -> list[Completion]:
        return [Completion("p", " loop loop", "length"), Completion("p", " A clean one.", "stop")]

    def detect(completion: Completion) -> Detection:
        return Detection(degenerate="loop" in completion.text)

    order = ["reference", "resample", "truncate"]
    pair = make_pair(
        sample(None), order=order, resample=resample, detect=detect, min_truncated_chars=5
    )
    assert (pair.chosen_source, pair.chosen) == ("resample", " A clean one.")
    pair = make_pair(
        sample(None), order=order, resample=no_resample, detect=detect, min_truncated_chars=5
    )
    assert (pair.chosen_source, pair.chosen) == ("truncate", " The cat sat.")


def test_no_source_no_pair() -> None:
    pair = make_pair(
        sample(None), order=["reference"], resample=no_resample, detect=clean, min_truncated_chars=5
    )
    assert pair is None
