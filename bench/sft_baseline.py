"""The SFT-only baseline: TRL's ``SFTTrainer`` on loopd's chosen answers, nothing else.

DharmaOCR's finding is that supervised fine-tuning alone hits a ceiling on degeneration
that a DPO stage breaks. To test that claim on loopd's own data, this trains the same
LoRA (rank, alpha, targets), at the same learning rate, batch and number of optimizer
steps, on the chosen answers of the pairs loopd trained on, tokenized exactly as loopd's
DPO rounds tokenize them (``dpo_data``: same prompt ids, same end token policy). Only
the objective differs: likelihood of the chosen answers, and no rejected side.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
from trl import SFTConfig, SFTTrainer

from loopd.backends.dpo_data import encode_pairs
from loopd.config import TrainingConfig
from loopd.prompts import end_token_ids


def sft_rows(records: list[dict[str, Any]], tokenizer, model_dir: Path, cfg: TrainingConfig):
    encoded = encode_pairs(
        records,
        tokenizer,
        end_token_id=end_token_ids(tokenizer, model_dir)[0],
        max_length=cfg.max_length,
    )
    return [
        {
            "input_ids": row["prompt_ids"] + row["chosen_ids"],
            "completion_mask": [0] * len(row["prompt_ids"]) + [1] * len(row["chosen_ids"]),
        }
        for row in encoded.rows
    ]


def train_sft(
    records: list[dict[str, Any]],
    *,
    model_dir: Path,
    out_dir: Path,
    cfg: TrainingConfig,
    steps: int,
    micro_batch: int,
) -> Path:
    """A LoRA trained by SFT for ``steps`` optimizer steps; returns its folder."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lora = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
    )
    with tempfile.TemporaryDirectory() as scratch:
        args = SFTConfig(
            output_dir=scratch,
            max_steps=steps,
            learning_rate=cfg.learning_rate,
            per_device_train_batch_size=micro_batch,
            gradient_accumulation_steps=max(1, cfg.batch_size // micro_batch),
            completion_only_loss=True,
            max_length=cfg.max_length,
            bf16=False,
            gradient_checkpointing=False,
            use_cpu=not torch.cuda.is_available(),
            seed=cfg.seed,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(sft_rows(records, tokenizer, model_dir, cfg)),
            processing_class=tokenizer,
            peft_config=lora,
        )
        trainer.remove_callback(PrinterCallback)  # log dicts on stdout, one per step
        trainer.train()
    trainer.model.save_pretrained(out_dir)
    return out_dir
