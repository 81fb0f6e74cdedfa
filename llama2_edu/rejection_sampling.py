"""Rejection sampling fine-tuning: Llama 2-Chat's first RLHF rounds (Touvron et al. 2023, 3.2.3).

For each prompt, sample K answers from the current model, score them with the reward model, keep
the best one, and fine-tune on those best answers with the ordinary SFT loss. Compared with PPO it
explores *breadth* (K answers per prompt, one update) rather than depth (one answer per prompt,
many small updates); Llama 2 used it alone up to RLHF-V4 and then ran PPO on top of it.

The gain comes from the spread of the reward among samples: the expected best of K rises with K
while the median does not (the paper's Figure 7), and the fine-tuning moves the model towards
its own best answers. `best_of_n_curve` measures that spread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .generation import generate
from .model import Transformer

RewardFn = Callable[[list, list, list], torch.Tensor]


@dataclass
class BestOfK:
    """K sampled answers per prompt, their scores, and the best one."""

    prompts: list[list[int]]
    infos: list
    samples: list[list[list[int]]]  # [prompt][k] answer token ids, without EOS
    ended: torch.Tensor  # (N, K) bool: the sample emitted EOS
    scores: torch.Tensor  # (N, K) reward (minus the no-EOS penalty)
    best: torch.Tensor  # (N,) index of the best sample

    @property
    def best_answers(self) -> list[list[int]]:
        return [s[int(b)] for s, b in zip(self.samples, self.best)]

    @property
    def best_ended(self) -> list[bool]:
        return [bool(self.ended[i, int(b)]) for i, b in enumerate(self.best)]

    @property
    def best_scores(self) -> torch.Tensor:
        return self.scores.gather(1, self.best[:, None]).squeeze(1)


@torch.no_grad()
def sample_k(model: Transformer, prompts: Sequence[Sequence[int]], k: int, max_gen_len: int,
             temperature: float = 1.0, top_p: float = 1.0, eos_id: int = 2,
             generator: torch.Generator | None = None, batch_size: int = 128
             ) -> tuple[list[list[list[int]]], torch.Tensor]:
    """K answers per prompt (without EOS) and whether each ended with EOS, shape (N, K)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not temperature > 0:
        raise ValueError(f"rejection sampling needs temperature > 0 (K different answers), "
                         f"got {temperature}")
    flat = [list(p) for p in prompts for _ in range(k)]  # prompt-major: rows i*k .. i*k+k-1
    answers: list[list[int]] = []
    for start in range(0, len(flat), batch_size):
        answers += generate(model, flat[start:start + batch_size], max_gen_len,
                            temperature=temperature, top_p=top_p, eos_id=eos_id,
                            generator=generator)
    # generate drops EOS, so an answer shorter than max_gen_len is one that ended.
    ended = torch.tensor([len(a) < max_gen_len for a in answers]).view(len(prompts), k)
    return [answers[i * k:(i + 1) * k] for i in range(len(prompts))], ended


def best_of_k(model: Transformer, prompts: Sequence[Sequence[int]], reward_fn: RewardFn, k: int,
              infos: Sequence | None = None, max_gen_len: int = 32, temperature: float = 1.0,
              eos_id: int = 2, no_eos_penalty: float = 1.0,
              generator: torch.Generator | None = None) -> BestOfK:
    """Sample K answers per prompt and pick the highest-scoring one. `reward_fn(prompts, answers,
    infos) -> (B,)` is the same function PPO uses; answers that never emit EOS lose
    `no_eos_penalty`, so a rambling sample is not kept merely for being long."""
    prompts = [list(p) for p in prompts]
    infos = list(infos) if infos is not None else [None] * len(prompts)
    samples, ended = sample_k(model, prompts, k, max_gen_len, temperature, eos_id=eos_id,
                              generator=generator)
    flat_prompts = [p for p in prompts for _ in range(k)]
    flat_infos = [i for i in infos for _ in range(k)]
    flat_answers = [a for s in samples for a in s]
    with torch.no_grad():
        scores = reward_fn(flat_prompts, flat_answers, flat_infos).float().view(len(prompts), k)
    scores = scores - no_eos_penalty * (~ended).float()
    return BestOfK(prompts=prompts, infos=infos, samples=samples, ended=ended, scores=scores,
                   best=scores.argmax(1))


def best_of_n_curve(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean max, mean median) reward among the first n samples, for n = 1..K, from (N, K)
    scores: the gap between the two is what rejection sampling can harvest (Llama 2, Fig. 7)."""
    k = scores.shape[1]
    best = torch.stack([scores[:, :n].max(1).values.mean() for n in range(1, k + 1)])
    median = torch.stack([scores[:, :n].median(1).values.mean() for n in range(1, k + 1)])
    return best, median


def finetune_on_answers(model: Transformer, prompts: Sequence[Sequence[int]],
                        answers: Sequence[Sequence[int]], ended: Sequence[bool] | None = None,
                        config=None, eos_id: int = 2, pad_id: int = 0) -> list[float]:
    """Supervised fine-tuning on (prompt, answer) token ids with the SFT code (`sft.finetune`,
    loss on answer tokens only). An answer that ended gets its EOS back, so stopping is learned
    too. Rows are padded, one dialog per row. `config` is an `sft.SFTConfig` (default: one
    epoch of the SFT recipe). Returns the step losses."""
    from .sft import SFTConfig, finetune, pad_batch

    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    ended = list(ended) if ended is not None else [True] * len(answers)
    rows = []
    for p, a, e in zip(prompts, answers, ended):
        answer = list(a) + ([eos_id] if e else [])
        rows.append((list(p) + answer, [False] * len(p) + [True] * len(answer)))
    inputs, labels, _ = pad_batch(rows, pad_id=pad_id)
    result = finetune(model, inputs, labels, config or SFTConfig(epochs=1))
    model.eval()
    # sft.finetune returns the training history (a dict of lists) or the losses themselves.
    return list(result["loss"]) if isinstance(result, dict) else list(result)


def rejection_sampling_round(model: Transformer, prompts: Sequence[Sequence[int]],
                             reward_fn: RewardFn, k: int, infos: Sequence | None = None,
                             max_gen_len: int = 32, temperature: float = 1.0, eos_id: int = 2,
                             no_eos_penalty: float = 1.0, sft_config=None,
                             generator: torch.Generator | None = None) -> tuple[BestOfK, list]:
    """One round: best of K per prompt, then fine-tune `model` in place on the best answers.
    Returns (the samples and scores, the fine-tuning losses)."""
    picked = best_of_k(model, prompts, reward_fn, k, infos, max_gen_len, temperature, eos_id,
                       no_eos_penalty, generator)
    losses = finetune_on_answers(model, picked.prompts, picked.best_answers, picked.best_ended,
                                 sft_config, eos_id=eos_id)
    return picked, losses


__all__ = ["BestOfK", "best_of_k", "best_of_n_curve", "finetune_on_answers",
           "rejection_sampling_round", "sample_k"]
