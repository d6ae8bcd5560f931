"""The trainer backend: one DPO round with TRL's ``DPOTrainer`` and a PEFT LoRA.

Runs as a child process (``python -m loopd.backends.trl_dpo JOB.json``) so that a crash,
an OOM kill or a hang can never take the daemon down. It talks to the parent in JSON
lines on stdout: ``plan`` (the micro-batching chosen for the memory budget), ``progress``
per logging step, then ``done`` or ``failed`` with a ``kind``; the result itself goes to
``result.json``. For large models the same entry point runs under ``accelerate launch``
(``training.launcher``): every rank trains, only rank 0 reports, saves and writes the
result.

The child dies with its parent: a watchdog thread exits it within a second of the
daemon's death (``kill -9`` included), so a restarted daemon never finds a stale round
still training into the folder it is cleaning up.

Steps of a round (``train``):

1. encode the pairs (``dpo_data``: loopd decides EOS and cuts, TRL gets ids);
2. plan micro-batches that fit the memory budget (``loopd.memory``) and, on a CPU,
   enforce the budget on this process, so running out is a clean, reported failure
   the parent retries at half the micro-batch, never the kernel's OOM killer;
3. load the policy (a new LoRA, or the deployed adapter to continue) and the reference;
4. train with TRL, gradient accumulation making up the configured batch;
5. save only the ``default`` adapter (TRL adds a frozen ``ref`` copy beside it).

CPU pitfalls handled (measured, see DESIGN): TRL's defaults (bf16, gradient
checkpointing, lr 1e-6) are wrong on CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
from trl import DPOConfig, DPOTrainer

from loopd.backends.dpo_data import encode_pairs
from loopd.memory import GIB, BatchPlan, ModelShape, available_bytes, budget_bytes, plan_batches
from loopd.prompts import end_token_ids

ENFORCEMENT_SLACK = GIB  # address space reserved but never touched (thread stacks, arenas)
REPORTED_METRICS = (
    "loss",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)
RANK = int(os.environ.get("RANK", "0"))  # set by accelerate launch (torchrun); 0 alone
WORLD_SIZE = int(os.environ.get("WORLD_SIZE", "1"))
LOCAL_WORLD_SIZE = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


class RoundFailed(Exception):
    """A failure the parent can act on; ``kind`` names it (see ``loopd.train``)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def emit(event: str, *, every_rank: bool = False, **fields: Any) -> None:
    """One JSON line to the parent; the daemon logs it and the CLI draws a bar.

    Under ``accelerate launch`` only rank 0 speaks (the ranks share one stdout), except
    for failures, which any rank may be the one to see.
    """
    if RANK == 0 or every_rank:
        print(json.dumps({"event": event, **fields}), flush=True)


class ProgressCallback(TrainerCallback):
    """Streams TRL's metrics to the parent at every logging step, with steps per second."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self._started = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        self.last |= {k: float(v) for k, v in logs.items() if k in REPORTED_METRICS}
        elapsed = time.perf_counter() - self._started
        emit(
            "progress",
            step=state.global_step,
            total=state.max_steps,
            loss=logs.get("loss"),
            steps_per_second=round(state.global_step / elapsed, 4) if elapsed > 0 else None,
            **{k.replace("/", "_"): v for k, v in logs.items() if k in REPORTED_METRICS[1:]},
        )


class PretokenizedDPOTrainer(DPOTrainer):
    """TRL's ``DPOTrainer`` on pairs ``dpo_data`` already tokenized.

    TRL would re-tokenize text and append EOS to every answer (see ``dpo_data`` for why
    that is wrong for loops); given ``prompt_ids``/``chosen_ids``/``rejected_ids`` rows,
    the rest of TRL (collator, reference log-probs, losses) is used unchanged.
    """

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset


def _on_gpu() -> bool:
    return torch.cuda.is_available()


def _budget(cfg: dict[str, Any]) -> int:
    """This rank's share: a GPU rank has its device; CPU ranks share the host's memory."""
    if _on_gpu():
        free = torch.cuda.mem_get_info()[0]
        return budget_bytes(cfg["memory_budget_gb"], free)
    return budget_bytes(cfg["memory_budget_gb"], available_bytes()) // LOCAL_WORLD_SIZE


def enforce_budget(limit: int) -> None:
    """Cap this process's data segment, so exceeding the budget raises, not OOM-kills.

    Also volunteer this process to the kernel's OOM killer ahead of everything else, so a
    machine short of memory loses the trainer and never the serving engine beside it.
    """
    resource.setrlimit(resource.RLIMIT_DATA, (limit + ENFORCEMENT_SLACK, resource.RLIM_INFINITY))
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("1000")


def plan_round(job: dict[str, Any], seq_len: int) -> BatchPlan:
    cfg = job["training"]
    explicit_ref = job["init_adapter"] is not None and cfg["reference_policy"] == "base"
    return plan_batches(
        ModelShape.from_folder(Path(job["base_model"])),
        batch_size=max(1, cfg["batch_size"] // WORLD_SIZE),  # each rank's share of a step
        seq_len=seq_len,
        budget_bytes=_budget(cfg),
        fixed_micro_batch=cfg["micro_batch_size"],
        cap=job.get("micro_batch_cap"),
        models_in_memory=2 if explicit_ref else 1,
    )


def load_policy(job: dict[str, Any]):
    """The model to train and, if needed, an explicit reference model."""
    cfg = job["training"]
    base = AutoModelForCausalLM.from_pretrained(job["base_model"], dtype=torch.float32)
    if job["init_adapter"] is None:
        lora = LoraConfig(
            r=cfg["lora_rank"],
            lora_alpha=cfg["lora_alpha"],
            lora_dropout=cfg["lora_dropout"],
            target_modules=cfg["target_modules"],
            task_type="CAUSAL_LM",
        )
        return base, None, lora  # reference = the base (adapter disabled), either policy
    model = PeftModel.from_pretrained(base, job["init_adapter"], is_trainable=True)
    if cfg["reference_policy"] == "base":
        reference = AutoModelForCausalLM.from_pretrained(job["base_model"], dtype=torch.float32)
        return model, reference, None
    return model, None, None  # TRL copies the deployed adapter as a frozen "ref"


def train(job: dict[str, Any]) -> dict[str, Any]:
    cfg = job["training"]
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    tokenizer = AutoTokenizer.from_pretrained(job["base_model"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    end_ids = end_token_ids(tokenizer, Path(job["base_model"]))
    encoded = encode_pairs(
        job["pairs"],
        tokenizer,
        end_token_id=end_ids[0],
        max_length=cfg["max_length"],
        max_loop_tokens=cfg["max_loop_tokens"],
    )
    if not encoded.rows:
        raise RoundFailed(
            "no_trainable_pairs",
            f"all {encoded.dropped_overlong} pairs are too long for training.max_length="
            f"{cfg['max_length']} (prompt + chosen answer, or the first tokens where the "
            "rejected loop differs from it); raise it",
        )
    plan = plan_round(job, encoded.longest)
    emit("plan", **_plan_fields(plan))
    if not _on_gpu():
        enforce_budget(plan.budget_bytes)
    model, reference, lora = load_policy(job)
    progress = ProgressCallback()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        trainer = PretokenizedDPOTrainer(
            model=model,
            ref_model=reference,
            args=_dpo_args(cfg, plan, scratch),
            train_dataset=_dataset(encoded.rows, Path(job["result_path"]).parent),
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[progress],
        )
        trainer.remove_callback(PrinterCallback)  # stdout is the JSON channel to the parent
        output = trainer.train()
    seconds = time.perf_counter() - started
    if trainer.accelerator.is_main_process:  # one writer: the ranks hold the same weights
        trainer.model.save_pretrained(job["out_dir"], selected_adapters=["default"])
    trainer.accelerator.wait_for_everyone()
    return {
        "pairs_used": len(encoded.rows),
        "dropped_overlong": encoded.dropped_overlong,
        "steps": output.global_step,
        "seconds": seconds,
        "final_loss": output.training_loss,
        "metrics": {
            "misaligned_pairs": encoded.misaligned,
            "rejected_cut": encoded.rejected_cut,
            "micro_batch": plan.micro_batch,
            "accumulation": plan.accumulation,
            "seq_len": plan.seq_len,
            "peak_memory_gb": round(_peak_bytes() / GIB, 3),
            "ranks": WORLD_SIZE,
            "precision": _precision(cfg),
            **{k.replace("/", "_"): v for k, v in progress.last.items()},
        },
    }


def _plan_fields(plan: BatchPlan) -> dict[str, Any]:
    return {
        "micro_batch": plan.micro_batch,
        "accumulation": plan.accumulation,
        "seq_len": plan.seq_len,
        "estimate_gb": round(plan.estimate_bytes / GIB, 2),
        "budget_gb": round(plan.budget_bytes / GIB, 2),
    }


def _peak_bytes() -> int:
    if _on_gpu():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _dataset(rows: list[dict[str, Any]], scratch: Path) -> Dataset:
    """The pairs as a dataset whose cache folder every rank shares.

    TRL caches the precomputed reference log-probs beside the dataset's own files: rank 0
    writes them, the others read that file. An in-memory dataset's files live in a
    temporary folder of each process's own, where the other ranks never find them.
    """
    dataset = Dataset.from_list(rows)
    if WORLD_SIZE == 1:
        return dataset
    return dataset.flatten_indices(cache_file_name=str(scratch / f"pairs-rank{RANK}.arrow"))


def _precision(cfg: dict[str, Any]) -> str:
    """``training.precision`` resolved on this device ('auto': bf16 where supported)."""
    if cfg["precision"] != "auto":
        return cfg["precision"]
    return "bf16" if _on_gpu() and torch.cuda.is_bf16_supported() else "fp32"


def _checkpointing(cfg: dict[str, Any]) -> bool:
    if cfg["gradient_checkpointing"] == "auto":
        return _on_gpu()
    return cfg["gradient_checkpointing"] == "on"


def _dpo_args(cfg: dict[str, Any], plan: BatchPlan, output_dir: str) -> DPOConfig:
    precision = _precision(cfg)
    return DPOConfig(
        output_dir=output_dir,
        learning_rate=cfg["learning_rate"],
        num_train_epochs=cfg["epochs"],
        per_device_train_batch_size=plan.micro_batch,
        gradient_accumulation_steps=plan.accumulation,
        precompute_ref_batch_size=plan.micro_batch,
        beta=cfg["beta"],
        loss_type=cfg["loss_type"],
        max_length=cfg["max_length"],
        precompute_ref_log_probs=True,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=_checkpointing(cfg),
        use_cpu=not _on_gpu(),
        seed=cfg["seed"],
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()
    )


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    try:
        result = train(job)
    except RoundFailed as error:
        emit("failed", every_rank=True, kind=error.kind, message=str(error))
        return 1
    except Exception as error:  # report what happened; the parent decides what is next
        traceback.print_exc()
        kind = "out_of_memory" if is_out_of_memory(error) else "crashed"
        message = f"{type(error).__name__}: {str(error)[:500]}"
        emit("failed", every_rank=True, kind=kind, message=message)
        return 1
    if RANK == 0:
        Path(job["result_path"]).write_text(json.dumps(result))
    emit("done", **result)
    return 0


PARENT_ENV = "LOOPD_PARENT_PID"  # set by loopd.train to its own pid


def exit_with_parent(daemon: int, poll_seconds: float = 0.5) -> None:
    """Exit as soon as the daemon (pid ``daemon``) or this process's own parent is gone.

    Alone, the parent is the daemon. Under ``accelerate launch`` each rank's parent is the
    launcher: a rank exits when the launcher is killed (timeout, shutdown) and when the
    daemon dies under a launcher that lives on; the launcher then ends with its ranks.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent and _alive(daemon):
            time.sleep(poll_seconds)
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    """``pid`` runs (a killed daemon its parent has not reaped yet is a zombie: gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


if __name__ == "__main__":
    if PARENT_ENV in os.environ:
        exit_with_parent(int(os.environ[PARENT_ENV]))
    sys.exit(main(sys.argv[1]))
