"""Direct Preference Optimization (Rafailov et al. 2023): RLHF without a reward model or rollouts.

The KL-regularised RL objective  max E[r] - beta * KL(pi || pi_ref)  has a closed-form optimum,
pi*(y|x) proportional to pi_ref(y|x) exp(r(x, y) / beta). Turned around, every policy defines an
*implicit reward*

    r_pi(x, y) = beta * (log pi(y|x) - log pi_ref(y|x))     (up to a term depending on x only)

and putting it into the Bradley-Terry preference model (the same one the reward models are trained
with) gives a loss on preference pairs (x, chosen y_c, rejected y_r) that trains the policy
directly:

    L = -log sigmoid( beta * [(log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) - log pi_ref(y_r))] )

Log-probabilities are summed over the answer tokens only (the prompt is given, not generated).
The per-prompt term cancels in the difference, which is why no reward model is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .ppo import pack, token_logprobs

Pair = tuple[Sequence[int], Sequence[int], Sequence[int]]  # prompt, chosen, rejected token ids


def sequence_logprobs(model: nn.Module, prompts: Sequence[Sequence[int]],
                      answers: Sequence[Sequence[int]], pad_id: int = 0) -> torch.Tensor:
    """log pi(answer | prompt) summed over the answer's tokens, one number per row (B,).
    Answers should end with EOS when the model is meant to stop there: it is a token like others."""
    tokens, mask = pack(prompts, answers, pad_id)
    return (token_logprobs(model, tokens) * mask).sum(-1)


def implicit_reward(policy_logp: torch.Tensor, ref_logp: torch.Tensor,
                    beta: float) -> torch.Tensor:
    """DPO's reward of an answer: beta * (log pi - log pi_ref)."""
    return beta * (policy_logp - ref_logp)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float = 0.1
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean DPO loss over pairs, from sequence log-probs (B,) of the policy and the reference.
    Returns (loss, chosen implicit rewards, rejected implicit rewards)."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen = implicit_reward(policy_chosen, ref_chosen, beta)
    rejected = implicit_reward(policy_rejected, ref_rejected, beta)
    # logsigmoid is the stable form of log(sigmoid(x)) for large |x|.
    loss = -F.logsigmoid(chosen - rejected).mean()
    return loss, chosen, rejected


@dataclass
class DPOConfig:
    """beta 0.1 is the DPO paper's default. The learning rate is for toy models (the paper used
    1e-6 for billion-parameter ones), with AdamW and gradient clipping as everywhere else."""

    beta: float = 0.1
    lr: float = 1e-4
    epochs: int = 1
    batch_size: int = 16
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    pad_id: int = 0
    seed: int = 0


@torch.no_grad()
def reference_logprobs(ref: nn.Module, pairs: Sequence[Pair], batch_size: int = 64,
                       pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi_ref of every chosen and rejected answer, computed once before training."""
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        prompts = [p for p, _, _ in chunk]
        chosen.append(sequence_logprobs(ref, prompts, [c for _, c, _ in chunk], pad_id))
        rejected.append(sequence_logprobs(ref, prompts, [r for _, _, r in chunk], pad_id))
    return torch.cat(chosen), torch.cat(rejected)


def train_dpo(policy: nn.Module, ref: nn.Module, pairs: Sequence[Pair],
              config: DPOConfig | None = None,
              on_step: Callable[[dict], None] | None = None) -> list[dict]:
    """Train `policy` in place with the DPO loss on preference pairs (prompt, chosen, rejected);
    `ref` stays frozen (usually the SFT model the policy started as). Returns one log per step:
    loss, reward accuracy (share of pairs whose chosen answer has the higher implicit reward),
    mean margin, and the mean implicit rewards of chosen and rejected answers."""
    c = config or DPOConfig()
    if not pairs:
        raise ValueError("train_dpo needs at least one preference pair")
    ref_chosen, ref_rejected = reference_logprobs(ref, pairs, pad_id=c.pad_id)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=c.lr, betas=(0.9, 0.95), eps=1e-5,
                                  weight_decay=c.weight_decay)
    generator = torch.Generator().manual_seed(c.seed)
    policy.eval()  # no dropout in our model; eval keeps any future dropout off as in PPO
    history: list[dict] = []
    for _ in range(c.epochs):
        order = torch.randperm(len(pairs), generator=generator)
        for start in range(0, len(pairs), c.batch_size):
            idx = order[start:start + c.batch_size]
            chunk = [pairs[i] for i in idx.tolist()]
            prompts = [p for p, _, _ in chunk]
            # One forward for both answers of every pair.
            logp = sequence_logprobs(policy, prompts + prompts,
                                     [ch for _, ch, _ in chunk] + [r for _, _, r in chunk],
                                     c.pad_id)
            pol_chosen, pol_rejected = logp[:len(chunk)], logp[len(chunk):]
            loss, chosen, rejected = dpo_loss(pol_chosen, pol_rejected, ref_chosen[idx],
                                              ref_rejected[idx], c.beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, c.max_grad_norm)
            optimizer.step()
            log = {"step": len(history), "loss": float(loss.detach()),
                   "reward_accuracy": float((chosen > rejected).float().mean()),
                   "margin": float((chosen - rejected).mean().detach()),
                   "chosen_reward": float(chosen.mean().detach()),
                   "rejected_reward": float(rejected.mean().detach())}
            history.append(log)
            if on_step is not None:
                on_step(log)
    return history


__all__ = ["DPOConfig", "dpo_loss", "implicit_reward", "reference_logprobs",
           "sequence_logprobs", "train_dpo"]
