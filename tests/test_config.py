"""Config: one declaration, validated; bad files name the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopd.cli import main
from loopd.config import ConfigError, LoopdConfig, load_config

REPO = Path(__file__).resolve().parents[1]


SHIPPED = sorted([*(REPO / "configs").glob("*.toml"), *(REPO / "deploy").glob("*.toml")])


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_loads(path: Path) -> None:
    config = load_config(path)
    assert config.state_dir.is_absolute()


def test_defaults_are_the_embedded_default() -> None:
    config = LoopdConfig()
    assert config.serving.backend == "local"
    assert config.model.base is None and config.gate.heldout is None


def test_unknown_key_names_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nlearning_rat = 0.1\n")
    with pytest.raises(ConfigError) as error:
        load_config(bad)
    assert error.value.problems == [
        "training.learning_rat: unknown key; remove it or check its spelling against the docs"
    ]


def test_bad_value_names_field_and_limit(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling:\n  top_p: 1.5\npairing:\n  chosen_order: [reference, oracle]\n")
    with pytest.raises(ConfigError) as error:
        load_config(bad)
    problems = "\n".join(error.value.problems)
    assert "sampling.top_p: Input should be less than or equal to 1" in problems
    assert "pairing.chosen_order.1:" in problems and "'oracle'" in problems


def test_proxy_settings_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[proxy]\nenabled = true\nhost = "0.0.0.0"\nredact_patterns = ["ok", "(unclosed", "a*"]\n'
    )
    with pytest.raises(ConfigError) as error:
        load_config(bad)
    problems = "\n".join(error.value.problems)
    assert (
        "proxy.redact_patterns:" in problems and "[1] '(unclosed' is not a valid regex" in problems
    )
    bad.write_text('[proxy]\nenabled = true\nhost = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match=r"api_keys: the proxy listens on 0\.0\.0\.0"):
        load_config(bad)


def test_relative_paths_are_anchored_at_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "c.toml"
    path.write_text(
        'state_dir = "st"\n[model]\nbase = "m"\n[sampling]\nprompts = ["p.jsonl"]\n'
        '[gate]\nheldout = "../h.jsonl"\n'
    )
    config = load_config(path)
    assert config.model.base == tmp_path / "sub" / "m"
    assert config.sampling.prompts == [tmp_path / "sub" / "p.jsonl"]
    assert config.state_dir == tmp_path / "sub" / "st"
    assert config.gate.heldout == tmp_path / "h.jsonl"


def test_config_check_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[gate]\nmin_length_ratio = -1\n")
    assert main(["config", "check", str(bad)]) == 1
    assert (
        "gate.min_length_ratio: Input should be greater than or equal to 0"
        in capsys.readouterr().out
    )
    assert main(["config", "check", str(REPO / "configs" / "local.toml")]) == 0


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "abs"}"\n[model]\nbase = "/models/m"\n'
        '[sampling]\nprompts = ["/p/t.jsonl"]\n[gate]\nheldout = "/p/h.jsonl"\n'
    )
    config = load_config(path)
    assert (config.state_dir, config.model.base) == (tmp_path / "abs", Path("/models/m"))


def test_vllm_serving_needs_the_local_weights_for_training(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[serving]\nbackend = "vllm"\n')
    with pytest.raises(ConfigError, match=r"model\.base"):
        load_config(path)


def test_own_model_needs_its_own_prompts(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[model]\nbase = "/models/m"\n[sampling]\nprompts = ["t.jsonl"]\n')
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert error.value.problems == [
        "gate.heldout: set it to your prompt files (JSON Lines); model.base names your own "
        "model, and the embedded prompts are only for the embedded tiny model"
    ]


def test_embedded_model_refuses_foreign_prompts(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[gate]\nheldout = "h.jsonl"\n')
    with pytest.raises(ConfigError, match=r"^.*model\.base: set it to the model your prompt"):
        load_config(path)


def test_answers_must_fit_the_training_length(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[serving]\nmax_tokens = 384\n[training]\nmax_length = 256\n")
    with pytest.raises(ConfigError, match=r"training\.max_length=256 must exceed"):
        load_config(path)


def test_micro_batch_must_divide_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[training]\nbatch_size = 8\nmicro_batch_size = 3\n")
    with pytest.raises(ConfigError, match="micro_batch_size=3 does not divide batch_size=8"):
        load_config(path)


def test_config_check_gives_advice_for_a_real_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[model]\nbase = "/m"\n[sampling]\nprompts = ["t.jsonl"]\n[gate]\nheldout = "h.jsonl"\n'
    )
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "training.learning_rate is the embedded tiny model's 2e-3" in out
    assert "serving.max_tokens=48 is the embedded model's" in out
