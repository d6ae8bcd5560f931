"""Shared fixtures: the real embedded model (built once per session), real SQLite files.

Nothing here is a stand-in: tests that need a model get the seeded tiny Llama the demo
ships, built locally in about half a minute, and a real transformers+PEFT backend.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from loopd.backends.local import LocalBackend
from loopd.config import LoopdConfig
from loopd.embedded import HELDOUT_FILE, MODEL_DIRNAME, TRAIN_FILE, ensure_embedded
from loopd.store import Store

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


def make_random_adapter(base: Path, out: Path, *, seed: int, rank: int = 8) -> Path:
    """A LoRA whose B matrices are seeded noise, so its outputs differ from the base."""
    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=rank, target_modules=TARGETS)
    )
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    model.save_pretrained(out)
    return out


@pytest.fixture
def random_adapter(base_model: Path, tmp_path: Path):
    return lambda seed, name="adapter": make_random_adapter(base_model, tmp_path / name, seed=seed)
