"""The embedded default: a tiny, seeded "transcription" model that degenerates.

No weights can be downloaded, so loopd builds its own base model for its CPU demo, tests
and benchmarks. The task stands in for OCR: the prompt holds a short document, the
answer is that document transcribed word for word, and every prompt carries its
reference answer, so quality is a character error rate (CER).

Why it loops: like an SFT'd OCR model that gets stuck on a repeated region, the model is
trained on answers that, after a doubled word in the document ("... lamp lamp ..."),
keep repeating that word until the token limit. Greedy decoding therefore degenerates
on the held-out documents that contain a doubled word (about a third of them) and copies
the rest. A DPO round whose chosen side is the reference must undo exactly that, and the
gate can check it did so without shortening answers.

The build is deterministic for a seed and takes about a minute on two cores; the
result is a normal Hugging Face folder (Llama architecture, word-level tokenizer) that
transformers, PEFT, TRL and vLLM all load.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from loopd.types import Prompt

log = logging.getLogger(__name__)

WORDS = (
    "amber anchor apple arrow autumn basket beacon birch bottle bridge candle canyon "
    "castle cedar cherry cloud copper coral desert dragon ember falcon feather forest "
    "garden glacier harbor island ivory jacket kettle lantern lemon marble meadow "
    "mirror needle ocean orchid pepper pillow planet quartz river saddle silver "
    "spider summit thunder tiger tulip velvet walnut willow window winter"
).split()
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
DOC_OPEN, DOC_CLOSE = "doc:", "text:"
MIN_WORDS, MAX_WORDS = 6, 12
MAX_ANSWER_TOKENS = 40  # a loop in the training data runs until this many answer tokens
DOUBLED_SHARE = 0.35  # share of documents that contain a doubled word
MODEL_DIRNAME, TRAIN_FILE, HELDOUT_FILE = "model", "train.jsonl", "heldout.jsonl"
MANIFEST = "embedded.json"


@dataclass(frozen=True)
class EmbeddedSpec:
    """What to build; the defaults are the embedded default loopd ships.

    Any change here (``format`` included) makes ``ensure_embedded`` rebuild a cached copy.
    """

    format: int = 2  # bump when the build changes in a way the fields below do not show
    seed: int = 0
    hidden_size: int = 64
    layers: int = 3
    heads: int = 2  # head_dim 32: vLLM's CPU attention supports it, 16 it may not
    steps: int = 800
    batch_size: int = 32
    learning_rate: float = 3e-3
    train_prompts: int = 400
    heldout_prompts: int = 120


def make_document(rng: random.Random, *, doubled: bool) -> list[str]:
    """A random document; a doubled one repeats one word in place, the loop trigger."""
    words = rng.choices(WORDS, k=rng.randint(MIN_WORDS, MAX_WORDS))
    if doubled:
        at = rng.randrange(1, len(words) - 2)
        words.insert(at, words[at - 1])
    return words


def render_prompt(words: list[str]) -> str:
    return " ".join([DOC_OPEN, *words, DOC_CLOSE])


def degenerate_answer(words: list[str]) -> list[str]:
    """The faulty training target: copy up to the doubled word, then repeat it forever."""
    at = next(i for i in range(1, len(words)) if words[i] == words[i - 1])
    head = words[: at + 1]
    return head + [words[at]] * (MAX_ANSWER_TOKENS - len(head))


def make_prompts(count: int, *, seed: int, prefix: str) -> list[Prompt]:
    rng = random.Random(seed)
    prompts = []
    for index in range(count):
        words = make_document(rng, doubled=rng.random() < DOUBLED_SHARE)
        kind = "doubled" if _has_doubled(words) else "plain"
        prompts.append(
            Prompt(
                id=f"{prefix}-{index:04d}",
                text=render_prompt(words),
                reference=" ".join(words),
                kind=kind,
            )
        )
    return prompts


def _has_doubled(words: list[str]) -> bool:
    return any(a == b for a, b in itertools.pairwise(words))


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with a Metaspace decoder so streaming detokenizers agree."""
    vocab = {token: i for i, token in enumerate([*SPECIALS, *(f"▁{w}" for w in WORDS)])}
    for marker in (DOC_OPEN, DOC_CLOSE):
        vocab[f"▁{marker}"] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    # "never": a decoded continuation keeps its leading space, also when a streaming
    # detokenizer (vLLM's) decodes generated tokens without the prompt before them, so
    # prompt + completion text re-tokenizes to the ids that were served.
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    bos = SPECIALS.index("<bos>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
    )


def _training_texts(rng: random.Random) -> Iterator[tuple[list[str], list[str]]]:
    """Endless (prompt words, answer words) examples of the faulty SFT distribution."""
    while True:
        words = make_document(rng, doubled=rng.random() < DOUBLED_SHARE)
        answer = degenerate_answer(words) if _has_doubled(words) else words
        yield [DOC_OPEN, *words, DOC_CLOSE], answer


def _encode(tokenizer: PreTrainedTokenizerFast, prompt: list[str], answer: list[str]):
    ids_prompt = tokenizer.convert_tokens_to_ids([f"▁{w}" for w in prompt])
    ids_answer = tokenizer.convert_tokens_to_ids([f"▁{w}" for w in answer])
    ends = [] if len(answer) >= MAX_ANSWER_TOKENS else [tokenizer.eos_token_id]
    ids = [tokenizer.bos_token_id, *ids_prompt, *ids_answer, *ends]
    labels = [-100] * (1 + len(ids_prompt)) + [*ids_answer, *ends]
    return ids, labels


def _batch(tokenizer, examples, pad_id: int) -> dict[str, torch.Tensor]:
    encoded = [_encode(tokenizer, p, a) for p, a in examples]
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id)
    labels = torch.full((len(encoded), width), -100)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def train_base_model(
    spec: EmbeddedSpec,
    tokenizer: PreTrainedTokenizerFast,
    progress: Callable[[int, int, float], None] | None = None,
) -> LlamaForCausalLM:
    """Plain next-token training on the faulty distribution, seeded end to end.

    One thread: a model this small trains fastest on one (more only adds sync overhead),
    and a fixed thread count keeps the float reductions, so the weights, the same on
    every machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(spec, tokenizer, progress)
    finally:
        torch.set_num_threads(threads)


def _train(
    spec: EmbeddedSpec,
    tokenizer: PreTrainedTokenizerFast,
    progress: Callable[[int, int, float], None] | None,
) -> LlamaForCausalLM:
    torch.manual_seed(spec.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.hidden_size * 2,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=spec.learning_rate, total_steps=spec.steps, pct_start=0.1
    )
    examples = _training_texts(random.Random(spec.seed + 1))
    model.train()
    for step in range(spec.steps):
        batch = _batch(tokenizer, [next(examples) for _ in range(spec.batch_size)], 0)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if progress is not None:
            progress(step + 1, spec.steps, loss.item())
    model.eval()
    return model


def write_prompt_file(path: Path, prompts: list[Prompt]) -> None:
    with path.open("w") as out:
        for prompt in prompts:
            row = {"id": prompt.id, "prompt": prompt.text, "reference": prompt.reference}
            out.write(json.dumps({**row, "kind": prompt.kind}) + "\n")


def ensure_embedded(
    directory: Path,
    spec: EmbeddedSpec = EmbeddedSpec(),
    progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Build the embedded model and its prompt files into ``directory`` unless present.

    The folder is written beside its final place and renamed in one step, so an
    interrupted build never leaves a half-written model that a later run would trust.
    """
    manifest = directory / MANIFEST
    if manifest.exists() and json.loads(manifest.read_text()) == asdict(spec):
        return directory
    log.info("building embedded model", extra={"path": str(directory), "steps": spec.steps})
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tokenizer = build_tokenizer()
    model = train_base_model(spec, tokenizer, progress)
    model.save_pretrained(staging / MODEL_DIRNAME)
    tokenizer.save_pretrained(staging / MODEL_DIRNAME)
    write_prompt_file(
        staging / TRAIN_FILE, make_prompts(spec.train_prompts, seed=spec.seed + 2, prefix="train")
    )
    write_prompt_file(
        staging / HELDOUT_FILE,
        make_prompts(spec.heldout_prompts, seed=spec.seed + 3, prefix="heldout"),
    )
    (staging / MANIFEST).write_text(json.dumps(asdict(spec), indent=2))
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    return directory
