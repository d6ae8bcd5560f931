"""The trainer backend: one DPO round with TRL's ``DPOTrainer`` and a PEFT LoRA.

Runs as a child process (``python -m loopd.backends.trl_dpo JOB.json``) so that a crash,
an OOM kill or a hang can never take the daemon down; the parent reads progress as JSON
lines on stdout and gets the result from ``result.json``. For large models the same
entry point runs under ``accelerate launch`` unchanged.

CPU pitfalls handled here (measured, see DESIGN): TRL's defaults (bf16, gradient
checkpointing, lr 1e-6) are wrong on CPU; over-long pairs are silently dropped by TRL,
so they are filtered and counted before it sees them; a continued adapter must be named
``default`` and TRL adds a frozen ``ref`` copy beside it, so only ``default`` is saved.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer

from loopd.backends.local import render_prompt
from loopd.types import Prompt


def emit(event: str, **fields: Any) -> None:
    """One JSON line to the parent; the daemon logs it and the CLI draws a bar."""
    print(json.dumps({"event": event, **fields}), flush=True)


class ProgressCallback(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        emit("progress", step=state.global_step, total=state.max_steps, loss=loss)


def screen_pairs(
    pairs: list[dict[str, str]], tokenizer, max_length: int
) -> tuple[list[dict[str, str]], int, int]:
    """Kept pairs, how many were too long, and how many of the kept are misaligned.

    Too long: prompt + chosen answer over ``max_length``. An over-long rejected loop is
    fine to cut (TRL truncates it), but a cut chosen answer would teach the model to stop
    early, and TRL drops over-long prompts without a word, so they are counted here.

    Misaligned: TRL tokenizes prompt + answer as one string; if the answer lacks the
    whitespace the model emitted after the prompt, the two glue into tokens never served
    and the round trains on noise. Counting them makes that visible instead of silent.
    """
    kept, misaligned = [], 0
    for pair in pairs:
        prompt_ids = tokenizer(pair["prompt"])["input_ids"]
        chosen_ids = tokenizer(pair["prompt"] + pair["chosen"])["input_ids"]
        if len(chosen_ids) + 1 > max_length:
            continue
        kept.append(pair)
        rejected_ids = tokenizer(pair["prompt"] + pair["rejected"])["input_ids"]
        cut = len(prompt_ids)
        if chosen_ids[:cut] != prompt_ids or rejected_ids[:cut] != prompt_ids:
            misaligned += 1
    return kept, len(pairs) - len(kept), misaligned


def _example(record: dict[str, Any], tokenizer) -> dict[str, str]:
    fields = record["prompt"]
    messages = fields["messages"]
    prompt = Prompt(**{**fields, "messages": tuple(messages) if messages else None})
    text = render_prompt(tokenizer, prompt)
    return {"prompt": text, "chosen": record["chosen"], "rejected": record["rejected"]}


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
    examples = [_example(record, tokenizer) for record in job["pairs"]]
    pairs, dropped, misaligned = screen_pairs(examples, tokenizer, cfg["max_length"])
    if not pairs:
        raise ValueError(f"all {dropped} pairs exceed training.max_length={cfg['max_length']}")
    model, reference, lora = load_policy(job)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        trainer = DPOTrainer(
            model=model,
            ref_model=reference,
            args=_dpo_args(cfg, scratch),
            train_dataset=Dataset.from_list(pairs),
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[ProgressCallback()],
        )
        output = trainer.train()
    seconds = time.perf_counter() - started
    trainer.model.save_pretrained(job["out_dir"], selected_adapters=["default"])
    return {
        "pairs_used": len(pairs),
        "dropped_overlong": dropped,
        "steps": output.global_step,
        "seconds": seconds,
        "final_loss": output.training_loss,
        "metrics": {"misaligned_pairs": misaligned},
    }


def _dpo_args(cfg: dict[str, Any], output_dir: str) -> DPOConfig:
    return DPOConfig(
        output_dir=output_dir,
        learning_rate=cfg["learning_rate"],
        num_train_epochs=cfg["epochs"],
        per_device_train_batch_size=cfg["batch_size"],
        beta=cfg["beta"],
        loss_type=cfg["loss_type"],
        max_length=cfg["max_length"],
        precompute_ref_log_probs=True,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
        seed=cfg["seed"],
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    result = train(job)
    Path(job["result_path"]).write_text(json.dumps(result))
    emit("done", **result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
