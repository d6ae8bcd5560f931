"""Pairing: chosen by configured preference, rejected is always the model's own loop."""

from __future__ import annotations

from loopd.detect import detect
from loopd.pair import Chosen, cut_at_first_repeat, cut_before_loop, make_pair, wants_resample
from loopd.types import Completion, Detection, Prompt, Sample

LOOPED = " The cat sat. It was warm warm warm warm warm"
START = LOOPED.index("warm warm")
ORDER = ["reference", "resample", "truncate"]


def sample(reference: str | None, finish: str = "length") -> Sample:
    prompt = Prompt(id="p", text="Story:", reference=reference)
    detection = Detection(degenerate=True, rule="tail_cycle", loop_start=START, period=5, repeats=5)
    return Sample(7, prompt, Completion("p", LOOPED, finish), detection, 0.0)


def clean(completion: Completion) -> Detection:
    return Detection(degenerate=False)


def loops_if_says_loop(completion: Completion) -> Detection:
    return Detection(degenerate="loop" in completion.text)


def test_a_cut_answer_is_trained_without_the_end_token_unless_asked() -> None:
    cut = make_pair(sample(None), order=["truncate"], resamples=[], detect=clean,
                    min_truncated_chars=5)  # fmt: skip
    assert (cut.chosen, cut.chosen_eos) == (" The cat sat.", False)
    ended = make_pair(sample(None), order=["truncate"], resamples=[], detect=clean,
                      min_truncated_chars=5, truncated_eos="at_boundary")  # fmt: skip
    assert ended.chosen_eos


def test_first_repeat_cut_keeps_one_occurrence_so_the_pair_differs_only_in_repeats() -> None:
    text = "Fruits:\n1. Apple\n2. Pear\n" + "3. Plum is good.\n" * 12
    found = detect(text)
    cut = cut_at_first_repeat(text, found, min_chars=5)
    assert cut == Chosen("Fruits:\n1. Apple\n2. Pear\n3. Plum is good.\n", eos=False)
    assert text.startswith(cut.text)
    pair = make_pair(sample(None), order=["truncate"], resamples=[], detect=clean,
                     min_truncated_chars=5, truncate_at="first_repeat")  # fmt: skip
    assert (pair.chosen, pair.chosen_eos) == (" The cat sat. It was warm ", False)


def test_first_repeat_cut_of_a_token_cycle_measures_the_unit_from_the_run() -> None:
    text = "ab" + "xyz" * 10
    cycle = Detection(degenerate=True, rule="token_cycle", loop_start=2, period=1, repeats=10)
    assert cut_at_first_repeat(text, cycle, min_chars=2) == Chosen("abxyz", eos=False)
    assert cut_at_first_repeat(text, cycle, min_chars=6) is None


def test_cut_closes_at_the_last_sentence_boundary() -> None:
    assert cut_before_loop(LOOPED, START, min_chars=5) == Chosen(" The cat sat.", eos=True)
    assert cut_before_loop(" ab ab ab", 1, min_chars=5) is None


def test_a_cut_without_a_boundary_is_no_ending() -> None:
    assert cut_before_loop("one two three four", 14, min_chars=3) == Chosen("one two three", False)


def test_reference_comes_first_and_keeps_the_models_leading_space() -> None:
    pair = make_pair(
        sample("The cat sat. It was warm."),
        order=["reference", "truncate"],
        resamples=[],
        detect=clean,
        min_truncated_chars=5,
    )
    assert pair.chosen_source == "reference"
    assert pair.chosen == " The cat sat. It was warm."
    assert pair.rejected == LOOPED and pair.sample_id == 7
    assert (pair.chosen_eos, pair.rejected_eos) == (True, False)  # the loop hit the limit


def test_falls_through_to_a_clean_resample_then_truncation() -> None:
    resamples = [Completion("p", " loop loop", "stop"), Completion("p", " A clean one.", "stop")]
    pair = make_pair(
        sample(None), order=ORDER, resamples=resamples, detect=loops_if_says_loop,
        min_truncated_chars=5,
    )  # fmt: skip
    assert (pair.chosen_source, pair.chosen, pair.chosen_eos) == ("resample", " A clean one.", True)
    pair = make_pair(
        sample(None), order=ORDER, resamples=[], detect=loops_if_says_loop, min_truncated_chars=5
    )
    assert (pair.chosen_source, pair.chosen) == ("truncate", " The cat sat.")


def test_a_resample_cut_by_the_token_limit_is_not_an_answer() -> None:
    cut = [Completion("p", " A clean start but the limit came", "length")]
    pair = make_pair(sample(None), order=ORDER, resamples=cut, detect=clean, min_truncated_chars=5)
    assert pair.chosen_source == "truncate"


def test_a_loop_that_ended_on_its_own_keeps_its_end_token() -> None:
    pair = make_pair(
        sample(None, finish="stop"), order=["truncate"], resamples=[], detect=clean,
        min_truncated_chars=5,
    )  # fmt: skip
    assert pair.rejected_eos


def test_only_samples_that_reach_the_resample_source_want_one() -> None:
    assert wants_resample(sample(None), ORDER)
    assert not wants_resample(sample("ref"), ORDER)  # the reference answers first
    assert wants_resample(sample("ref"), ["resample", "reference"])
    assert not wants_resample(sample(None), ["reference", "truncate"])


def test_no_source_no_pair() -> None:
    pair = make_pair(
        sample(None), order=["reference"], resamples=[], detect=clean, min_truncated_chars=5
    )
    assert pair is None
