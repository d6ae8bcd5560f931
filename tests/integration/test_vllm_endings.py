"""Every end id of a model's generation config ends a generation, in vLLM as locally.

Models such as Llama 3 list several end ids (end of text, end of turn); a loop detector
fed answers that ran past their end, or a trainer that saw them end where serving did
not, measure and teach the wrong thing. A copy of the embedded model whose generation
config also ends on one of its words is served by a second real vLLM server and by the
local engine; both must stop at that word, the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from loopd.backends.local import LocalBackend
from loopd.backends.vllm import VllmBackend, VllmConfig
from loopd.backends.vllm.server import VllmServer
from loopd.types import GenerationRequest, Prompt

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def ending_model(embedded_dir: Path, tmp_path_factory, with_generation_eos) -> tuple[Path, dict]:
    row = json.loads((embedded_dir / "heldout.jsonl").open().readline())
    folder, extra = with_generation_eos(
        tmp_path_factory.mktemp("ending") / "m", row["reference"].split()[2]
    )
    return folder, {"row": row, "extra": extra}


@pytest.fixture(scope="module")
def ending_server(vllm_interpreter: Path, ending_model, tmp_path_factory) -> Iterator[VllmServer]:
    folder, _ = ending_model
    log = tmp_path_factory.mktemp("ending-vllm") / "vllm.log"
    with VllmServer(folder, python=vllm_interpreter, served_name="ending", log_path=log) as server:
        yield server


def test_vllm_and_local_both_stop_at_a_generation_config_end_id(
    ending_model, ending_server: VllmServer
) -> None:
    folder, case = ending_model
    request = GenerationRequest(Prompt(id="x", text=case["row"]["prompt"]), max_tokens=40)
    config = VllmConfig(endpoints=[ending_server.url], monitor_interval_s=0)
    with VllmBackend(config, base_model_name="ending") as served:
        [[remote]] = served.generate([request])
    [[local]] = LocalBackend(folder, threads=1).generate([request])
    words = case["row"]["reference"].split()
    assert local.text == remote.text == " " + " ".join(words[:2])
    assert local.finish_reason == remote.finish_reason == "stop"
    assert local.stop_reason == case["extra"]
