"""loopd's one configuration, declared once, validated at load.

Every field says what it means. Unknown keys are rejected (a typo must not pass
silently), and a bad file yields one line per problem naming the field's dotted path
and what is allowed, which ``loopd config check FILE`` prints. Relative paths in a file
are taken relative to that file's folder, so a config means the same from any cwd.
Unset model and prompt paths mean the embedded default: a tiny seeded model and its
prompt files, built once under ``state_dir``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from loopd.config.sections import (
    ADMIN_TOKEN_ENV,
    ChosenSource,
    DaemonConfig,
    DeployConfig,
    GateConfig,
    LocalPath,
    ModelConfig,
    PairingConfig,
    Probability,
    ProxyConfig,
    SamplingConfig,
    Section,
    ServingConfig,
    TrainingConfig,
)
from loopd.config.vllm import VllmConfig
from loopd.detect import DetectorConfig

__all__ = [
    "ADMIN_TOKEN_ENV",
    "ChosenSource",
    "ConfigError",
    "DaemonConfig",
    "DeployConfig",
    "DetectorConfig",
    "GateConfig",
    "LoopdConfig",
    "ModelConfig",
    "PairingConfig",
    "Probability",
    "ProxyConfig",
    "SamplingConfig",
    "ServingConfig",
    "TrainingConfig",
    "VllmConfig",
    "load_config",
]


class LoopdConfig(Section):
    state_dir: LocalPath = Field(
        Path("state"), description="Database, adapters and embedded model."
    )
    model: ModelConfig = ModelConfig()
    serving: ServingConfig = ServingConfig()
    sampling: SamplingConfig = SamplingConfig()
    detector: DetectorConfig = DetectorConfig()
    pairing: PairingConfig = PairingConfig()
    training: TrainingConfig = TrainingConfig()
    gate: GateConfig = GateConfig()
    deploy: DeployConfig = DeployConfig()
    daemon: DaemonConfig = DaemonConfig()
    proxy: ProxyConfig = ProxyConfig()

    @model_validator(mode="after")
    def _vllm_needs_base_weights(self) -> LoopdConfig:
        if self.serving.backend == "vllm" and self.model.base is None:
            raise ValueError(
                "model.base: set it to a local folder with the weights vLLM serves; "
                "training needs them, and the embedded model is not what vLLM serves"
            )
        return self

    @model_validator(mode="after")
    def _embedded_only_as_a_whole(self) -> LoopdConfig:
        """The embedded prompts suit only the embedded model, and the reverse.

        A real model silently sampled on the embedded model's synthetic documents (or the
        tiny word-level model on real prompts) runs, measures nothing and looks fine.
        """
        unset = [
            name
            for name, value in (
                ("sampling.prompts", self.sampling.prompts),
                ("gate.heldout", self.gate.heldout),
            )
            if not value
        ]
        if self.model.base is not None and unset:
            raise ValueError(
                f"{' and '.join(unset)}: set {'them' if len(unset) > 1 else 'it'} to your "
                "prompt files (JSON Lines); model.base names your own model, and the embedded "
                "prompts are only for the embedded tiny model"
            )
        if self.model.base is None and len(unset) < 2:
            raise ValueError(
                "model.base: set it to the model your prompt files are for; the embedded tiny "
                "model knows only its own word list (or unset sampling.prompts and "
                "gate.heldout too, for the whole embedded default)"
            )
        return self

    @model_validator(mode="after")
    def _answers_fit_training(self) -> LoopdConfig:
        if self.training.max_length <= self.serving.max_tokens:
            raise ValueError(
                f"training.max_length={self.training.max_length} must exceed "
                f"serving.max_tokens={self.serving.max_tokens}: a chosen answer as long as "
                "serving allows, plus its prompt, could never be trained; raise "
                "training.max_length or lower serving.max_tokens"
            )
        return self

    def advice(self) -> list[str]:
        """Settings that validate but are likely wrong; printed by ``config check``."""
        notes = []
        fields = self.training.model_fields_set
        if self.model.base is not None and "learning_rate" not in fields:
            notes.append(
                "training.learning_rate is the embedded tiny model's 2e-3; a pretrained model "
                "wants ~1e-4 to 5e-4 for a LoRA (configs/smollm2.toml has measured values)"
            )
        if self.model.base is not None and self.serving.max_tokens <= 64:
            notes.append(
                f"serving.max_tokens={self.serving.max_tokens} is the embedded model's; a real "
                "model's loops start after a few hundred tokens (configs/smollm2.toml: 384)"
            )
        return notes

    @property
    def db_path(self) -> Path:
        return self.state_dir / "loopd.db"

    @property
    def adapters_dir(self) -> Path:
        return self.state_dir / "adapters"

    @property
    def embedded_dir(self) -> Path:
        return self.state_dir / "embedded"


class ConfigError(ValueError):
    """A config that cannot be used; ``problems`` holds one readable line per field."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def load_config(path: Path) -> LoopdConfig:
    """Read, validate and anchor a TOML or YAML config; raise ``ConfigError`` if bad."""
    raw = _read_mapping(path)
    try:
        config = LoopdConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(str(path), [_describe(e) for e in error.errors()]) from None
    return _anchor_paths(config, path.resolve().parent)


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(str(path), [f"cannot read the file: {error.strerror}"]) from None
    except UnicodeDecodeError as error:
        raise ConfigError(str(path), [f"not UTF-8 text ({error.reason})"]) from None
    try:
        if path.suffix in (".yaml", ".yml"):
            raw = yaml.safe_load(text) or {}
        else:
            raw = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        raise ConfigError(str(path), [f"not valid {path.suffix[1:].upper()}: {error}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(str(path), ["the top level must be a table of sections"])
    return raw


def _describe(error: dict[str, Any]) -> str:
    parts = [str(part) for part in error["loc"]]
    where = ".".join(parts if all(parts) else map(repr, parts)) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key; remove it or check its spelling against the docs"
    if error["type"] == "value_error" and not error["loc"]:
        return error["msg"].removeprefix("Value error, ")  # names its own fields
    return f"{where}: {error['msg']} (got {error.get('input')!r})"


def _anchor_paths(config: LoopdConfig, base: Path) -> LoopdConfig:
    def anchor(path: Path | None) -> Path | None:
        return path if path is None or path.is_absolute() else (base / path).resolve()

    return config.model_copy(
        update={
            "state_dir": anchor(config.state_dir),
            "model": config.model.model_copy(update={"base": anchor(config.model.base)}),
            "sampling": config.sampling.model_copy(
                update={"prompts": [anchor(p) for p in config.sampling.prompts]}
            ),
            "gate": config.gate.model_copy(update={"heldout": anchor(config.gate.heldout)}),
            "training": config.training.model_copy(
                update={"accelerate_config": anchor(config.training.accelerate_config)}
            ),
        }
    )
