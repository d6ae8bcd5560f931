"""Shared fixtures: the real embedded model (built once per session), real SQLite files.

Nothing here is a stand-in: tests that need a model get the seeded tiny Llama the demo
ships, built locally in about half a minute, and a real transformers+PEFT backend.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from pydantic import SecretStr
from transformers import AutoModelForCausalLM, AutoTokenizer

from loopd.backends.local import LocalBackend
from loopd.config import LoopdConfig
from loopd.embedded import HELDOUT_FILE, MODEL_DIRNAME, TRAIN_FILE, ensure_embedded
from loopd.store import Store

ADMIN_TOKEN = "test-admin-token-0123456789"  # the daemons under test require it
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="session")
def embedded_dir(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped embedded build, kept in pytest's cache: built once per machine."""
    torch.set_num_threads(1)
    cache = getattr(pytestconfig, "cache", None)  # absent under -p no:cacheprovider
    root = cache.mkdir("loopd-embedded") if cache else tmp_path_factory.mktemp("embedded")
    return ensure_embedded(Path(root) / "embedded")


@pytest.fixture(scope="session")
def base_model(embedded_dir: Path) -> Path:
    return embedded_dir / MODEL_DIRNAME


@pytest.fixture
def backend(base_model: Path) -> LocalBackend:
    return LocalBackend(base_model, threads=1)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    opened = Store(tmp_path / "loopd.db")
    yield opened
    opened.close()


@pytest.fixture
def config(tmp_path: Path, embedded_dir: Path) -> LoopdConfig:
    """The embedded default, pointed at the session's model and a fresh state folder."""
    return LoopdConfig.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "model": {"base": str(embedded_dir / MODEL_DIRNAME)},
            "sampling": {"prompts": [str(embedded_dir / TRAIN_FILE)]},
            "gate": {"heldout": str(embedded_dir / HELDOUT_FILE)},
        }
    )


@pytest.fixture
def daemon_config(config: LoopdConfig) -> LoopdConfig:
    """The config for a daemon under test: any free port, jobs only when a test asks."""
    return config.model_copy(
        update={
            "daemon": config.daemon.model_copy(
                update={
                    "port": 0,
                    "train_check_seconds": 3600,
                    "admin_token": SecretStr(ADMIN_TOKEN),
                }
            ),
            "sampling": config.sampling.model_copy(update={"interval_seconds": 3600}),
        }
    )


@pytest.fixture
def admin_headers() -> dict[str, str]:
    """What an operator's client sends to the admin endpoints of ``daemon_config``."""
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def config_file(daemon_config: LoopdConfig, tmp_path: Path) -> Path:
    """``daemon_config`` as a TOML file, for the CLI and ``loopd run`` in a subprocess."""
    cfg = daemon_config
    path = tmp_path / "loopd.toml"
    path.write_text(
        f'state_dir = "{cfg.state_dir}"\n'
        f'[model]\nbase = "{cfg.model.base}"\n'
        f'[sampling]\nprompts = ["{cfg.sampling.prompts[0]}"]\ninterval_seconds = 3600\n'
        f'[gate]\nheldout = "{cfg.gate.heldout}"\n'
        f'[daemon]\nport = 0\ntrain_check_seconds = 3600\nadmin_token = "{ADMIN_TOKEN}"\n'
    )
    return path


@pytest.fixture(scope="session")
def make_adapter(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make_adapter(seed, rank=8) -> folder``: a saved LoRA with seeded random lora_B.

    A fresh LoRA's B matrices are zero (it equals the base); noise makes each seed's
    outputs differ from the base's and from each other's, so a test can tell who answered.
    """
    root = tmp_path_factory.mktemp("adapters")
    models: dict[int, torch.nn.Module] = {}

    def make(seed: int, rank: int = 8) -> Path:
        folder = root / f"r{rank}-s{seed}"
        if folder.exists():
            return folder
        if rank not in models:
            base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
            config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS)
            models[rank] = get_peft_model(base, config)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in models[rank].named_parameters():
                if "lora_B" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        models[rank].save_pretrained(folder)
        return folder

    return make


@pytest.fixture(scope="session")
def with_generation_eos(base_model: Path) -> Callable[[Path, str], tuple[Path, int]]:
    """``with_generation_eos(folder, word)``: a copy of the embedded model at ``folder``
    whose generation config ends on ``word`` too (as Llama 3 lists several end ids)."""

    def copy(folder: Path, word: str) -> tuple[Path, int]:
        shutil.copytree(base_model, folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        extra = tokenizer.convert_tokens_to_ids(f"▁{word}")
        config = json.loads((folder / "generation_config.json").read_text())
        config["eos_token_id"] = [tokenizer.eos_token_id, extra]
        (folder / "generation_config.json").write_text(json.dumps(config))
        return folder, extra

    return copy
