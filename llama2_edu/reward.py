"""Reward models: a transformer that reads a (prompt, answer) dialog and outputs one number.

Llama 2 (Touvron et al. 2023, section 3.2.2) trains two of them, one for helpfulness and one
for safety, each initialised from a pretrained chat checkpoint, with "the classification head for
next-token prediction ... replaced with a regression head for outputting a scalar reward". They
are trained on human comparisons with a binary ranking loss plus a margin that grows with how
clearly the annotator preferred one answer:

    L = -log sigmoid( r(x, y_chosen) - r(x, y_rejected) - m(rating) )

with m from Table 27: small margins 1, 2/3, 1/3, 0 and large margins 3, 2, 1, 0 for
"significantly better", "better", "slightly better", "negligibly better / unsure". Table 28
reports accuracy per rating for no margin, small and large margins; `train_reward_model` and
`pair_accuracy` reproduce that ablation at toy scale.

The reward is read at the last real token of each sequence (the EOS that closes the answer).
Batches are right-padded, and causal attention means padding after a token never changes what
the model computes at that token, so `lengths - 1` is all we need to find it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import chat
from .model import Transformer
from .train import TrainConfig, atomic_save, lr_at, make_optimizer

RATINGS = ("significantly better", "better", "slightly better", "negligibly better / unsure")
# Table 27 of the Llama 2 paper: margin m(r) for each rating, in the order of RATINGS.
MARGINS: dict[str, tuple[float, ...]] = {
    "none": (0.0, 0.0, 0.0, 0.0),
    "small": (1.0, 2 / 3, 1 / 3, 0.0),
    "large": (3.0, 2.0, 1.0, 0.0),
}


class RewardModel(nn.Module):
    """The transformer trunk with its vocabulary projection replaced by a scalar head.

    `trunk` is a `Transformer` whose `output` is the identity, so `trunk(tokens)` returns the
    final normalised hidden states (B, T, dim); `head` maps the hidden state at the last real
    token to the reward."""

    def __init__(self, trunk: Transformer):
        super().__init__()
        self.args = trunk.args
        trunk.output = nn.Identity()  # the next-token head is gone (and out of the state dict)
        self.trunk = trunk
        self.head = nn.Linear(trunk.args.dim, 1)
        # Zero: every reward starts at 0, so the first loss is exactly -log sigmoid(-m).
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_model(cls, model: Transformer) -> RewardModel:
        """A reward model initialised from (a copy of) a language model, e.g. the SFT model."""
        return cls(copy.deepcopy(model))

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Rewards (B,) for right-padded `tokens` (B, T); `lengths` (B,) counts each row's real
        tokens (default: every row is full)."""
        hidden = self.trunk(tokens)  # (B, T, dim); output = Identity
        return reward_at_last_token(self.head(hidden).squeeze(-1), lengths)


def reward_at_last_token(scores: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """scores[b, lengths[b] - 1] for each row b of (B, T) per-position scores."""
    batch, width = scores.shape
    if lengths is None:
        return scores[:, -1]
    if bool((lengths < 1).any()) or bool((lengths > width).any()):
        raise ValueError(f"lengths must lie in [1, {width}], got {lengths.tolist()}")
    return scores[torch.arange(batch, device=scores.device), lengths.to(scores.device) - 1]


def margins_for(ratings: torch.Tensor, scheme: str = "small") -> torch.Tensor:
    """m(r) for a tensor of rating indices (0 = significantly better ... 3 = negligibly)."""
    if scheme not in MARGINS:
        raise ValueError(f"unknown margin scheme {scheme!r}; choose from {', '.join(MARGINS)}")
    return torch.tensor(MARGINS[scheme], dtype=torch.float32)[ratings]


def ranking_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                 margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Llama 2's binary ranking loss, averaged: mean(-log sigmoid(r_c - r_r - m)).
    `F.logsigmoid` is the numerically stable log(sigmoid(.))."""
    return -F.logsigmoid(r_chosen - r_rejected - margin).mean()


# ---------------------------------------------------------------------------------------------
# Batches of preference pairs
# ---------------------------------------------------------------------------------------------


def encode_answer(tokenizer, prompt: Sequence[dict], answer: str) -> list[int]:
    """Token ids of `prompt` (a dialog ending with a user message) answered by `answer`, in the
    chat format, ending with the answer's EOS: the sequence a reward model scores."""
    dialog = [dict(m) for m in prompt] + [{"role": "assistant", "content": answer}]
    ids, _ = chat.encode_dialog_with_answer(tokenizer, dialog)
    return ids


def right_pad(rows: Sequence[Sequence[int]], pad_id: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (B, T), lengths (B,)) with every row padded on the right by `pad_id`."""
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
    return tokens, torch.tensor([len(r) for r in rows], dtype=torch.long)


@dataclass
class EncodedPairs:
    """Preference pairs as token ids: chosen[i] and rejected[i] answer the same prompt."""

    chosen: list[list[int]]
    rejected: list[list[int]]
    ratings: torch.Tensor  # (N,) rating indices
    tasks: list[str]

    def __len__(self) -> int:
        return len(self.chosen)


def encode_pairs(tokenizer, pairs: Sequence) -> EncodedPairs:
    """Token ids of `PreferencePair`s (llama2_edu.data.assistant)."""
    return EncodedPairs(
        chosen=[encode_answer(tokenizer, p.prompt, p.chosen) for p in pairs],
        rejected=[encode_answer(tokenizer, p.prompt, p.rejected) for p in pairs],
        ratings=torch.tensor([p.rating for p in pairs], dtype=torch.long),
        tasks=[p.task for p in pairs])


def score_pairs(model: RewardModel, data: EncodedPairs, idx: Sequence[int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected) for the pairs `idx`, chosen and rejected in one padded batch."""
    rows = [data.chosen[i] for i in idx] + [data.rejected[i] for i in idx]
    tokens, lengths = right_pad(rows)
    rewards = model(tokens, lengths)
    return rewards[:len(idx)], rewards[len(idx):]


@torch.no_grad()
def score_all(model: RewardModel, data: EncodedPairs, batch_size: int = 128
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of every chosen and rejected answer, (N,) each."""
    model.eval()
    chosen, rejected = [], []
    for start in range(0, len(data), batch_size):
        c, r = score_pairs(model, data, range(start, min(start + batch_size, len(data))))
        chosen.append(c)
        rejected.append(r)
    return torch.cat(chosen), torch.cat(rejected)


@torch.no_grad()
def score_texts(model: RewardModel, tokenizer, prompts: Sequence[Sequence[dict]],
                answers: Sequence[str], batch_size: int = 128) -> torch.Tensor:
    """The reward of each (prompt dialog, answer text)."""
    model.eval()
    rows = [encode_answer(tokenizer, p, a) for p, a in zip(prompts, answers)]
    out = []
    for start in range(0, len(rows), batch_size):
        tokens, lengths = right_pad(rows[start:start + batch_size])
        out.append(model(tokens, lengths))
    return torch.cat(out)


def pair_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor, ratings: torch.Tensor
                  ) -> dict[str, float]:
    """Share of pairs ranked correctly (r_chosen > r_rejected), overall and per rating."""
    correct = (r_chosen > r_rejected).float()
    out = {"overall": correct.mean().item()}
    for i, name in enumerate(RATINGS):
        sel = ratings == i
        if bool(sel.any()):
            out[name] = correct[sel].mean().item()
    return out


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardConfig:
    """Llama 2's reward-model recipe, scaled down. Paper (section 3.2.2): one epoch (longer
    overfits), AdamW with the pretraining settings, lr 1e-5 (5e-6 for 70B), cosine decay to 10%
    of the peak, warmup 3% of the steps (at least 5), 512 pairs per batch. A toy model moves
    further per step and can take a larger learning rate and smaller batches."""

    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_ratio: float = 0.03
    min_warmup: int = 5
    weight_decay: float = 0.1
    batch_size: int = 32
    epochs: int = 1
    margin: str = "small"
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def train_config(self, n_pairs: int) -> TrainConfig:
        """The schedule and optimiser settings as a `train.TrainConfig` (AdamW 0.9/0.95,
        eps 1e-5, clipping 1.0, warmup + cosine) for one run over `n_pairs` pairs."""
        steps = max(1, math.ceil(n_pairs / self.batch_size) * self.epochs)
        warmup = min(steps, max(self.min_warmup, round(self.warmup_ratio * steps)))
        return TrainConfig(max_steps=steps, lr=self.lr, warmup_steps=warmup,
                           min_lr_ratio=self.min_lr_ratio, weight_decay=self.weight_decay,
                           seed=self.seed)


def train_reward_model(model: RewardModel, data: EncodedPairs,
                       config: RewardConfig = RewardConfig(),
                       on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Train `model` in place with the ranking loss and `config.margin`; return step losses."""
    if config.margin not in MARGINS:
        raise ValueError(f"unknown margin scheme {config.margin!r}; choose from "
                         f"{', '.join(MARGINS)}")
    tc = config.train_config(len(data))
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(model, tc)
    margin_table = torch.tensor(MARGINS[config.margin], dtype=torch.float32)
    model.train()
    losses: list[float] = []
    step = 0
    for _ in range(config.epochs):
        order = torch.randperm(len(data), generator=generator).tolist()
        for start in range(0, len(data), config.batch_size):
            idx = order[start:start + config.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, tc)
            r_c, r_r = score_pairs(model, data, idx)
            loss = ranking_loss(r_c, r_r, margin_table[data.ratings[idx]])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            losses.append(loss.item())
            if on_step is not None:
                on_step(step, losses[-1])
            step += 1
    model.eval()
    return losses


# ---------------------------------------------------------------------------------------------
# Cached reward models for later chapters
# ---------------------------------------------------------------------------------------------

REWARD_RECIPE = {"config": RewardConfig().to_dict(), "n_train": 2000, "data_seed": 0,
                 "version": 4}


def reward_training_data(tokenizer, kind: str, n: int = REWARD_RECIPE["n_train"],
                         seed: int = REWARD_RECIPE["data_seed"], split: str = "train"
                         ) -> EncodedPairs:
    """The encoded preference pairs the `kind` reward model is trained (or evaluated) on."""
    from .data.assistant import preference_pairs

    return encode_pairs(tokenizer, preference_pairs(n, kind=kind, seed=seed, split=split))


# Round 2, as Llama 2 iterated (section 3.2.1: each week new comparisons of answers sampled from
# the latest model): the SFT model answers training prompts several times, the annotator
# (`data.assistant.quality_level`) compares its answers, and round 1's reward model goes on
# learning from these comparisons (one more epoch of the same recipe, on the new pairs only).
ROUND2_RECIPE = {"prompts": {"helpfulness": 500, "safety": 400}, "red_team_share": 0.25,
                 "samples_per_prompt": 6, "pairs_per_prompt": 4, "max_gen_len": 24,
                 "temperature": 1.0, "seed": 21, "version": 1}


@torch.no_grad()
def on_policy_pairs(model: Transformer, tokenizer, kind: str, n_prompts: int,
                    samples_per_prompt: int = 6, pairs_per_prompt: int = 4,
                    max_gen_len: int = 24, temperature: float = 1.0, seed: int = 21,
                    red_team_share: float = 0.0, batch_size: int = 128) -> list:
    """Preference pairs among `model`'s own answers: `n_prompts` training-split prompts of the
    `kind`'s tasks (plus `red_team_share` * n_prompts red-team requests for safety), each
    answered `samples_per_prompt` times at `temperature`, compared by the ground-truth annotator
    (`data.assistant.pairs_from_samples`). Deterministic for `seed`."""
    import random

    from .data.assistant import (
        PAIR_TASKS,
        assistant_examples,
        pairs_from_samples,
        red_team_examples,
    )
    from .rejection_sampling import sample_k

    if kind not in PAIR_TASKS:
        raise ValueError(f"kind must be one of {', '.join(PAIR_TASKS)}, got {kind!r}")
    examples = assistant_examples(n_prompts, seed=seed, split="train", tasks=PAIR_TASKS[kind])
    if kind == "safety" and red_team_share > 0:
        examples += red_team_examples(round(red_team_share * n_prompts), seed=seed,
                                      split="train")
    prompts = [chat.encode_dialog(tokenizer, ex.dialog) for ex in examples]
    model.eval()
    samples, _ = sample_k(model, prompts, samples_per_prompt, max_gen_len, temperature,
                          eos_id=tokenizer.eos_id, generator=torch.Generator().manual_seed(seed),
                          batch_size=batch_size)
    answers = [[tokenizer.decode(ids).strip() for ids in row] for row in samples]
    rng = random.Random(f"on-policy-{kind}-{seed}")
    return [pair for ex, texts in zip(examples, answers)
            for pair in pairs_from_samples(ex, texts, pairs_per_prompt, rng)]


def round2_training_pairs(sft: Transformer, tokenizer, kind: str) -> list:
    """Round 2's new data for `kind`: `on_policy_pairs` of the SFT model by `ROUND2_RECIPE`."""
    r = ROUND2_RECIPE
    return on_policy_pairs(sft, tokenizer, kind, r["prompts"][kind], r["samples_per_prompt"],
                           r["pairs_per_prompt"], r["max_gen_len"], r["temperature"], r["seed"],
                           r["red_team_share"] if kind == "safety" else 0.0)


def reward_cache_path(sft: Transformer, kind: str,
                      cache_dir: str | os.PathLike | None = None, data_round: int = 1) -> Path:
    from .pretrained import default_cache_dir
    from .sft import recipe_key

    root = Path(cache_dir) if cache_dir is not None else Path(default_cache_dir())
    recipe = {**REWARD_RECIPE, "kind": kind}
    if data_round == 2:
        recipe = {**recipe, "round2": ROUND2_RECIPE}
        return root / f"rm2-{kind}-{recipe_key(recipe, sft)}.pt"
    return root / f"rm-{kind}-{recipe_key(recipe, sft)}.pt"


def train_toy_reward_model(sft: Transformer, tokenizer, kind: str, *,
                           cache_dir: str | os.PathLike | None = None,
                           data: EncodedPairs | None = None,
                           data_round: int = 1) -> tuple[RewardModel, list[float]]:
    """Train the `kind` reward model of `data_round`, always, write it to the cache
    `toy_reward_model()` reads, and return (model, step losses). Round 1: from `sft`, on
    `REWARD_RECIPE`'s hand-written pairs. Round 2: round 1's model (from the cache, or trained
    first) trained on comparisons of the SFT model's own answers (`round2_training_pairs`)."""
    if kind not in ("helpfulness", "safety"):
        raise ValueError(f"kind must be 'helpfulness' or 'safety', got {kind!r}")
    if data_round not in (1, 2):
        raise ValueError(f"data_round must be 1 or 2, got {data_round!r}")
    config = RewardConfig(**REWARD_RECIPE["config"])
    if data_round == 1:
        model = RewardModel.from_model(sft)
        data = data if data is not None else reward_training_data(tokenizer, kind)
    else:
        model = copy.deepcopy(_cached_or_trained(sft, tokenizer, kind, cache_dir))
        data = data if data is not None else encode_pairs(
            tokenizer, round2_training_pairs(sft, tokenizer, kind))
    torch.manual_seed(config.seed)
    losses = train_reward_model(model, data, config)
    atomic_save({"model": model.state_dict(), "losses": losses},
                reward_cache_path(sft, kind, cache_dir, data_round))
    return model, losses


def _cached_or_trained(sft: Transformer, tokenizer, kind: str,
                       cache_dir: str | os.PathLike | None, data_round: int = 1) -> RewardModel:
    path = reward_cache_path(sft, kind, cache_dir, data_round)
    if path.exists():
        model = RewardModel.from_model(sft)
        model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu")["model"])
        return model.eval()
    model, _ = train_toy_reward_model(sft, tokenizer, kind, cache_dir=cache_dir,
                                      data_round=data_round)
    return model.eval()


def toy_reward_model(kind: str = "helpfulness", *, cache_dir: str | os.PathLike | None = None,
                     retrain: bool = False, data_round: int = 1) -> tuple[RewardModel, object]:
    """(reward model, tokenizer): the helpfulness or safety reward model of `data_round` (1 or 2,
    see `train_toy_reward_model`), initialised from `sft.sft_model()` (small margins), loaded
    from the cache or trained now (round 2 also samples the SFT model first: about a minute)."""
    from .sft import sft_model

    if kind not in ("helpfulness", "safety"):
        raise ValueError(f"kind must be 'helpfulness' or 'safety', got {kind!r}")
    if data_round not in (1, 2):
        raise ValueError(f"data_round must be 1 or 2, got {data_round!r}")
    sft, tokenizer = sft_model(cache_dir=cache_dir)
    if retrain:
        model, _ = train_toy_reward_model(sft, tokenizer, kind, cache_dir=cache_dir,
                                          data_round=data_round)
        return model.eval(), tokenizer
    return _cached_or_trained(sft, tokenizer, kind, cache_dir, data_round), tokenizer
