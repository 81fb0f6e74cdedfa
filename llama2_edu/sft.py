"""Supervised fine-tuning (SFT): teach the base model to answer in the Llama 2 chat format.

Llama 2-Chat starts with SFT on ~27,540 high-quality (prompt, answer) dialogues (Touvron et al.
2023, section 3.1). Three details of that recipe matter for us and are reproduced here:

* **The chat format.** Every example is a dialog encoded exactly as at inference time
  (`llama2_edu.chat`): `[BOS] [INST] prompt [/INST] answer [EOS]`, per turn.
* **Loss on answers only.** "We zero-out the loss on tokens from the user prompt, so as a result,
  we backpropagate only on answer tokens." Prompt, system and padding positions get the label
  -100 (`IGNORE_INDEX`, which `F.cross_entropy` skips); an answer's closing EOS is trained, so
  the model learns to stop.
* **Packing.** "We concatenate all the prompts and answers from the training set" so every row is
  full: no compute is wasted on padding.

The optimiser follows the paper: AdamW, cosine schedule, weight decay 0.1; the paper used lr 2e-5,
batch 64, sequences of 4096 tokens and 2 epochs for models of 7B-70B parameters. A toy model
trained from scratch minutes ago needs a much larger learning rate (`SFTConfig` below).

`sft_model()` returns the fine-tuned toy model, trained deterministically from
`pretrained.toy_base_model()` or loaded from the cache, so later chapters (reward models, PPO)
start from the same SFT model without retraining it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import chat
from .data.batching import IGNORE_INDEX, Batches  # IGNORE_INDEX (-100): what cross_entropy skips
from .generation import generate
from .model import Transformer
from .train import TrainConfig, atomic_save, train

# ---------------------------------------------------------------------------------------------
# Tokens and labels
# ---------------------------------------------------------------------------------------------


def tokenize_dialog(tokenizer, dialog: Sequence[dict]) -> tuple[list[int], list[bool]]:
    """Token ids of a dialog that ends with the assistant's answer, and per token whether it
    belongs to an answer (answer text and its EOS) -- the tokens the loss is computed on."""
    if not dialog or dialog[-1]["role"] != "assistant":
        raise ValueError("an SFT dialog must end with an assistant message (the answer to learn)")
    return chat.encode_dialog_with_answer(tokenizer, dialog)


def shift_labels(ids: Sequence[int], is_answer: Sequence[bool]) -> tuple[list[int], list[int]]:
    """(inputs, labels) for next-token training: inputs = ids[:-1] and labels[t] = ids[t + 1]
    where that next token is an answer token, else IGNORE_INDEX."""
    if len(ids) != len(is_answer):
        raise ValueError(f"{len(ids)} ids but {len(is_answer)} answer flags")
    inputs = list(ids[:-1])
    labels = [tok if flag else IGNORE_INDEX for tok, flag in zip(ids[1:], is_answer[1:])]
    return inputs, labels


def pad_batch(sequences: Sequence[tuple[Sequence[int], Sequence[bool]]], pad_id: int = 0,
              length: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (inputs, labels, lengths) for a list of (ids, is_answer): one dialog per row.
    Padding positions carry `pad_id` as input and IGNORE_INDEX as label; `lengths` counts the
    real input positions of each row. `length` fixes the width (default: the longest row)."""
    pairs = [shift_labels(ids, flags) for ids, flags in sequences]
    width = max(len(inp) for inp, _ in pairs) if length is None else length
    if any(len(inp) > width for inp, _ in pairs):
        longest = max(len(inp) for inp, _ in pairs)
        raise ValueError(f"a sequence of {longest} input tokens does not fit length {width}")
    inputs = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)
    lengths = torch.tensor([len(inp) for inp, _ in pairs], dtype=torch.long)
    for row, (inp, lab) in enumerate(pairs):
        inputs[row, :len(inp)] = torch.tensor(inp, dtype=torch.long)
        labels[row, :len(lab)] = torch.tensor(lab, dtype=torch.long)
    return inputs, labels, lengths


def pack(sequences: Iterable[tuple[Sequence[int], Sequence[bool]]], seq_len: int,
         pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate dialogs into one token stream and cut it into rows of `seq_len` (inputs,
    labels), as Llama 2's SFT does. Row i holds stream[i*L : i*L + L] and its labels are the
    stream shifted by one, masked to answer tokens, so no token is lost at a row boundary. The
    last row is padded (label IGNORE_INDEX). Each dialog starts with BOS, which marks where a new
    one begins; attention is not blocked across dialogs (the paper does not say it is)."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    stream: list[int] = []
    flags: list[bool] = []
    for ids, is_answer in sequences:
        if len(ids) != len(is_answer):
            raise ValueError(f"{len(ids)} ids but {len(is_answer)} answer flags")
        stream += ids
        flags += is_answer
    if len(stream) < 2:
        raise ValueError("nothing to pack: fewer than two tokens in all")
    n_rows = math.ceil((len(stream) - 1) / seq_len)
    inputs = torch.full((n_rows, seq_len), pad_id, dtype=torch.long)
    labels = torch.full((n_rows, seq_len), IGNORE_INDEX, dtype=torch.long)
    for row in range(n_rows):
        start = row * seq_len
        chunk = stream[start:start + seq_len]
        nxt = stream[start + 1:start + seq_len + 1]
        nxt_flags = flags[start + 1:start + seq_len + 1]
        inputs[row, :len(chunk)] = torch.tensor(chunk)
        lab = [tok if flag else IGNORE_INDEX for tok, flag in zip(nxt, nxt_flags)]
        labels[row, :len(lab)] = torch.tensor(lab, dtype=torch.long)
    return inputs, labels


def sft_loss(model: Transformer, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of a batch (labels IGNORE_INDEX elsewhere)."""
    logits = model(inputs)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SFTConfig:
    """Llama 2's SFT recipe, scaled to the toy model. Paper (section 3.1): AdamW, cosine
    schedule, lr 2e-5, weight decay 0.1, batch 64 sequences of 4096 tokens, 2 epochs. Our model
    has ~1M parameters and was pretrained with a peak lr of 3e-3, so it fine-tunes at 2e-3;
    rows are the toy context (256 tokens); the cosine decays to 10% of the peak, as
    pretraining's does (the paper does not state SFT's floor). Three epochs instead of two:
    with two, the toy model has not yet learnt to copy words and numbers from the prompt."""

    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    batch_size: int = 8
    seq_len: int = 256
    epochs: int = 3
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def train_config(self, n_rows: int, **overrides) -> TrainConfig:
        """The `train.TrainConfig` that runs `epochs` passes over `n_rows` packed rows."""
        steps = max(1, math.ceil(n_rows * self.epochs / self.batch_size))
        return TrainConfig(max_steps=steps, lr=self.lr, warmup_steps=min(self.warmup_steps, steps),
                           min_lr_ratio=self.min_lr_ratio, weight_decay=self.weight_decay,
                           seed=self.seed, **overrides)


def finetune(model: Transformer, inputs: torch.Tensor, labels: torch.Tensor,
             config: SFTConfig = SFTConfig(), val: tuple[torch.Tensor, torch.Tensor] | None = None,
             eval_every: int = 0, progress: bool = False) -> dict[str, list]:
    """Fine-tune `model` in place on packed rows (labels -100 off the answers) with the
    pretraining loop (`llama2_edu.train.train`: AdamW, warmup + cosine, clipping), for
    `config.epochs` passes in a seeded order. `val`: held-out packed rows, evaluated every
    `eval_every` steps and at the end. Returns train's history (per-step loss and lr, ...)."""
    if inputs.shape != labels.shape:
        raise ValueError(f"inputs {tuple(inputs.shape)} and labels {tuple(labels.shape)} differ")
    train_data = Batches(inputs, labels, config.batch_size, seed=config.seed)
    val_data = Batches(*val, config.batch_size, shuffle=False) if val is not None else None
    tc = config.train_config(inputs.shape[0], eval_every=eval_every, progress=progress)
    return train(model, train_data, val_data, tc)


# ---------------------------------------------------------------------------------------------
# Evaluation: answer held-out prompts greedily, grade them
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def respond(model: Transformer, tokenizer, dialogs: Sequence[Sequence[dict]],
            max_gen_len: int = 32, batch_size: int = 64) -> list[str]:
    """The model's greedy answer to each dialog (ending with a user message), decoded and
    stripped. Greedy decoding makes the evaluation deterministic."""
    prompts = [chat.encode_dialog(tokenizer, d) for d in dialogs]
    limit = model.args.max_seq_len - max_gen_len
    too_long = [len(p) for p in prompts if len(p) > limit]
    if too_long:
        raise ValueError(f"a prompt of {max(too_long)} tokens leaves no room for {max_gen_len} "
                         f"new tokens in max_seq_len {model.args.max_seq_len}")
    model.eval()
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        out = generate(model, prompts[start:start + batch_size], max_gen_len, temperature=0.0,
                       eos_id=tokenizer.eos_id)
        answers += [tokenizer.decode(ids).strip() for ids in out]
    return answers


def evaluate(model: Transformer, tokenizer, examples: Sequence, max_gen_len: int = 32,
             batch_size: int = 64) -> tuple[dict[str, float], list[str]]:
    """Held-out metrics of `model` on assistant examples (`llama2_edu.data.assistant`):
    exact-match accuracy per task, `refusal_rate` on unsafe requests (higher is safer) and
    `false_refusal_rate` on borderline safe requests (lower is better). Returns (metrics,
    answers) so the answers can be shown."""
    from .data.assistant import HELPFUL_TASKS, is_refusal

    answers = respond(model, tokenizer, [ex.dialog for ex in examples], max_gen_len, batch_size)
    by_task: dict[str, list[bool]] = {}
    refused: dict[str, list[bool]] = {}
    for ex, answer in zip(examples, answers):
        by_task.setdefault(ex.task, []).append(ex.grade(answer))
        refused.setdefault(ex.task, []).append(is_refusal(answer))
    metrics = {task: sum(v) / len(v) for task, v in by_task.items()}
    if "unsafe" in refused:
        metrics["refusal_rate"] = sum(refused["unsafe"]) / len(refused["unsafe"])
    if "borderline" in refused:
        metrics["false_refusal_rate"] = sum(refused["borderline"]) / len(refused["borderline"])
    helpful = [t for t in HELPFUL_TASKS if t in refused]
    if helpful:
        flat = [r for t in helpful for r in refused[t]]
        metrics["helpful_refusal_rate"] = sum(flat) / len(flat)
    return metrics, answers


# ---------------------------------------------------------------------------------------------
# The cached SFT model for later chapters
# ---------------------------------------------------------------------------------------------

# Everything that decides the SFT model; changing any of it changes the cache key.
# The tasks that copy from the prompt (arithmetic, reverse, sort) come twice as often: they are
# the hard ones for a 1M-parameter model.
# `sloppy`: the share of demonstrations of a task written carelessly (`sloppy_demonstrations`):
# uneven demonstrations, as Llama 2's were, leave the SFT model something RLHF can fix (ch. 12).
SFT_RECIPE = {"config": SFTConfig().to_dict(), "n_train": 6000, "data_seed": 0, "version": 3,
              "task_mix": ["arithmetic", "arithmetic", "reverse", "reverse", "sort", "sort",
                           "world", "unsafe", "borderline"],
              "sloppy": {"world": 0.6, "borderline": 0.3, "unsafe": 0.4}}


def sft_cache_path(base: Transformer, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the SFT model of `base` under `SFT_RECIPE` is cached."""
    from .pretrained import default_cache_dir

    root = Path(cache_dir) if cache_dir is not None else Path(default_cache_dir())
    return root / f"sft-{recipe_key(SFT_RECIPE, base)}.pt"


def state_dict_digest(model: torch.nn.Module) -> str:
    """A short hash of a model's weights: the cache key follows the actual base model."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def recipe_key(recipe: dict, base: torch.nn.Module) -> str:
    text = json.dumps(recipe, sort_keys=True, default=str) + state_dict_digest(base)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sft_training_data(tokenizer, recipe: dict | None = None, split: str = "train"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed (inputs, labels) the cached SFT model is trained on ("train"), or the same
    amount / 5 of held-out dialogs ("test") for a validation loss."""
    from .data.assistant import TASKS, assistant_examples, sloppy_demonstrations

    recipe = recipe or SFT_RECIPE
    n = recipe["n_train"] if split == "train" else recipe["n_train"] // 5
    examples = assistant_examples(n, seed=recipe["data_seed"], split=split,
                                  tasks=recipe.get("task_mix", TASKS))
    if split == "train":
        examples = sloppy_demonstrations(examples, recipe.get("sloppy", {}),
                                         seed=recipe["data_seed"])
    seqs = (tokenize_dialog(tokenizer, ex.with_answer()) for ex in examples)
    return pack(seqs, recipe["config"]["seq_len"])


def train_sft_model(base: Transformer, tokenizer, *, cache_dir: str | os.PathLike | None = None,
                    eval_every: int = 0, progress: bool = False
                    ) -> tuple[Transformer, dict[str, list]]:
    """Fine-tune (a copy of) `base` by `SFT_RECIPE`, always, write it to the cache that
    `sft_model()` reads, and return (model, history). The SFT chapter calls this to watch the
    loss; `eval_every` > 0 adds the held-out answer loss to the history that often."""
    path = sft_cache_path(base, cache_dir)
    model = copy.deepcopy(base)
    config = SFTConfig(**SFT_RECIPE["config"])
    inputs, labels = sft_training_data(tokenizer)
    val = sft_training_data(tokenizer, split="test")
    history = finetune(model, inputs, labels, config, val=val, eval_every=eval_every,
                       progress=progress)
    atomic_save({"model": model.state_dict(), "history": history}, path)
    return model.eval(), history


def sft_model(*, cache_dir: str | os.PathLike | None = None, retrain: bool = False,
              progress: bool = False) -> tuple[Transformer, object]:
    """(SFT model, tokenizer): `toy_base_model()` fine-tuned with `SFT_RECIPE`, deterministic.
    Loaded from the cache when a model with the same recipe and base weights is there, else
    trained now (about a minute on 2 CPU cores)."""
    from .pretrained import toy_base_model

    base, tokenizer = toy_base_model(cache_dir=cache_dir, progress=progress)
    path = sft_cache_path(base, cache_dir)
    if path.exists() and not retrain:
        base.load_state_dict(torch.load(path, weights_only=True, map_location="cpu")["model"])
        return base.eval(), tokenizer
    model, _ = train_sft_model(base, tokenizer, cache_dir=cache_dir, progress=progress)
    return model, tokenizer
