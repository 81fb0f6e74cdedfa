"""RLHF with PPO, the way Llama 2-Chat was tuned (Touvron et al. 2023, section 3.2.3).

One PPO iteration:

1. **Rollout.** Sample an answer to each prompt from the policy at temperature T.
2. **Score.** A reward function scores every (prompt, answer). Llama 2 combines two reward models:
   R_c = R_safety if the prompt is unsafe or R_safety < 0.15, else R_helpful, where each R is the
   reward model's scalar output passed through a sigmoid (a number in (0, 1)); the score is then
   whiten(logit(R_c)), i.e. the chosen model's raw output standardised over the batch.
3. **Per-token rewards.** Every answer token pays a KL penalty  -beta * (log pi - log pi_ref)
   against the frozen reference (the SFT model); the score is added at the answer's last token.
4. **Advantages.** A value model predicts the return at every answer position; generalised
   advantage estimation (GAE, gamma = 1, lambda = 0.95) turns rewards and values into advantages,
   which are whitened over the batch's answer tokens.
5. **Update.** Several epochs over shuffled minibatches of the rollout, each minimising the clipped
   surrogate  -min(rho A, clip(rho, 1 - eps, 1 + eps) A)  (rho = pi / pi_old, eps = 0.2) and a
   clipped value loss.

Layout convention (used by every function here and by `dpo.py`): a rollout row is the token
sequence  prompt + answer (+ EOS if one was emitted), right-padded. Arrays over "actions" have
length seq_len - 1: entry j belongs to token j + 1 and is computed from the model's output at
position j, because the logits at position t - 1 are the distribution the token at t was drawn
from. The value at entry j is the value of the state "tokens 0..j seen", before token j + 1 is
chosen.

The value model is a separate network (`ValueModel`: a transformer trunk with a scalar head), not
a head on the policy: the policy's update then never sees the value loss's gradients (no
loss-balancing coefficient to tune), and the value network can start from the reward model, which
already maps (prompt, answer) to a score, as InstructGPT does. It costs a second forward/backward,
which is cheap at the book's scale.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .generation import generate
from .model import Transformer

# ---------------------------------------------------------------------------------------------
# Rows: prompt + answer, and log-probabilities at the right offsets
# ---------------------------------------------------------------------------------------------


def pack(prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
         pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows prompt + answer, and the mask of answer tokens over actions.

    Returns tokens (B, L) and action_mask (B, L - 1): action_mask[b, j] is True when token j + 1
    of row b belongs to the answer (include EOS in `answers` when the answer ended with it)."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. BOS): the first answer "
                         "token is scored by the logits at the position before it")
    length = max(len(p) + len(a) for p, a in zip(prompts, answers))
    tokens = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length - 1), dtype=torch.bool)
    for row, (p, a) in enumerate(zip(prompts, answers)):
        tokens[row, :len(p) + len(a)] = torch.tensor(list(p) + list(a), dtype=torch.long)
        mask[row, len(p) - 1:len(p) - 1 + len(a)] = True
    return tokens, mask


def token_logprobs(model: nn.Module, tokens: torch.Tensor, temperature: float = 1.0,
                   with_entropy: bool = False):
    """log p(token_{j+1} | tokens_0..j) for every j, from logits / temperature: shape (B, L - 1).

    The temperature must be the one the tokens were sampled with, otherwise the "old" policy in
    the PPO ratio is not the distribution that produced the data. With `with_entropy`, also the
    entropy of each of those distributions."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 for log-probabilities, got {temperature}")
    logits = model(tokens)[:, :-1].float() / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    if not with_entropy:
        return logp
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """Standardise the masked entries of x (zero mean, unit variance over the mask); entries
    outside the mask come back as 0. With shift_mean=False the mean is restored afterwards."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def whiten(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over a batch of scores (population std; eps guards a constant batch)."""
    return masked_whiten(x, torch.ones_like(x, dtype=torch.bool), eps=eps)


# ---------------------------------------------------------------------------------------------
# Llama 2's reward: two reward models, one rule
# ---------------------------------------------------------------------------------------------


def combine_rewards(helpful: torch.Tensor, safety: torch.Tensor, is_unsafe: torch.Tensor,
                    threshold: float = 0.15) -> torch.Tensor:
    """Llama 2's rule (eq. in section 3.2.3), on rewards already in (0, 1):
    R_c = R_safety where the prompt is unsafe or R_safety < threshold, else R_helpful.

    The safety model takes over whenever the prompt is known to be risky, and also on any answer
    it judges clearly unsafe, so a helpful-looking but harmful answer cannot score high."""
    use_safety = is_unsafe.bool() | (safety < threshold)
    return torch.where(use_safety, safety, helpful)


def llama2_score(helpful_raw: torch.Tensor, safety_raw: torch.Tensor, is_unsafe: torch.Tensor,
                 threshold: float = 0.15, eps: float = 1e-6) -> torch.Tensor:
    """logit(R_c) from the two reward models' raw scalar outputs (before whitening).

    Exactly: R_h = sigmoid(helpful_raw), R_s = sigmoid(safety_raw), R_c = combine_rewards(...),
    score = logit(clamp(R_c, eps, 1 - eps)). The sigmoid puts both models on the same (0, 1)
    scale, where the 0.15 threshold is defined; the logit undoes it, so the score is the chosen
    model's raw output (clipped to |score| <= logit(1 - eps) ~ 13.8), which is not squashed near
    0 and 1 and therefore keeps a gradient signal for clearly good or bad answers."""
    r_c = combine_rewards(torch.sigmoid(helpful_raw), torch.sigmoid(safety_raw), is_unsafe,
                          threshold)
    return torch.logit(r_c.clamp(eps, 1 - eps))


ScoreFn = Callable[[list, list, list], torch.Tensor]


class Llama2Reward:
    """A reward function for `PPOTrainer`: `score = logit(R_c)` from a helpfulness and a safety
    scorer. Each scorer maps (prompts, answers, infos) -- token-id lists and each prompt's info
    object -- to raw scores (B,); `is_unsafe` maps an info object to a bool (default: the info is
    the flag itself).

    The components of the last call are kept in `self.last` for logging."""

    def __init__(self, helpful: ScoreFn, safety: ScoreFn, threshold: float = 0.15,
                 is_unsafe: Callable[[Any], bool] = bool):
        self.helpful, self.safety, self.threshold, self.is_unsafe = (helpful, safety, threshold,
                                                                     is_unsafe)
        self.last: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, prompts: list, answers: list, infos: list) -> torch.Tensor:
        h_raw = self.helpful(prompts, answers, infos).float()
        s_raw = self.safety(prompts, answers, infos).float()
        unsafe = torch.tensor([bool(self.is_unsafe(i)) for i in infos])
        score = llama2_score(h_raw, s_raw, unsafe, self.threshold)
        r_h, r_s = torch.sigmoid(h_raw), torch.sigmoid(s_raw)
        self.last = {"helpful": r_h, "safety": r_s, "unsafe": unsafe,
                     "used_safety": unsafe | (r_s < self.threshold)}
        return score


# ---------------------------------------------------------------------------------------------
# Rewards per token, advantages, losses
# ---------------------------------------------------------------------------------------------


def kl_penalised_rewards(score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor,
                         mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-action rewards (B, L - 1): -beta * (log pi - log pi_ref) on every answer token, plus the
    sequence score on the answer's last token. Summed over a row this is score - beta * KL-sample,
    the KL-regularised objective of Llama 2 (and InstructGPT)."""
    rewards = -beta * (logp - ref_logp) * mask
    last = last_index(mask)
    rewards[torch.arange(len(score)), last] += score.to(rewards.dtype)
    return rewards


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True entry of each row (rows must have at least one)."""
    if not bool(mask.any(-1).all()):
        raise ValueError("every row needs at least one answer token (EOS counts)")
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, -1).max(-1).values


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over each row's answer tokens.

        delta_t = r_t + gamma * V_{t+1} - V_t          (V after the last answer token is 0)
        A_t     = delta_t + gamma * lam * A_{t+1}
        returns = A + V   (the value model's regression target)

    Returns (advantages, returns), zero outside the mask. Answer tokens must be contiguous."""
    mask_f = mask.to(rewards.dtype)
    values = values * mask_f
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    steps = rewards.shape[-1]
    for t in reversed(range(steps)):
        # mask[t + 1] is 0 after an answer's last token: nothing to bootstrap from there.
        alive_next = mask_f[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value * alive_next - values[:, t]
        running = delta + gamma * lam * running * alive_next
        advantages[:, t] = running
    advantages = advantages * mask_f
    return advantages, (advantages + values) * mask_f


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_eps: float = 0.2):
    """PPO's clipped surrogate, averaged over answer tokens: mean(max(-rho A, -clip(rho) A)).

    Once the ratio rho = pi / pi_old leaves [1 - eps, 1 + eps] in the direction the advantage
    pushes it, the clipped term is constant and the token stops contributing a gradient.
    Returns (loss, clip_fraction, ratio)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    return loss, clip_fraction, ratio


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor, clip: float = 0.2):
    """0.5 * mean(max((V - R)^2, (V_clipped - R)^2)) with V_clipped = V_old + clip(V - V_old):
    the value model may not move further than `clip` from its rollout-time prediction per update.
    Returns (loss, clip_fraction)."""
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    err = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    return loss, masked_mean((err_clipped > err).float(), mask)


# ---------------------------------------------------------------------------------------------
# The value model
# ---------------------------------------------------------------------------------------------


def final_hidden(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """The transformer's normalised final hidden states (B, T, dim), i.e. the input of `output`.

    Captured with a hook on the final norm rather than by re-implementing the forward pass, so it
    stays right whatever the model's internals become (the vocabulary projection it also runs is
    cheap at our sizes)."""
    captured = {}
    handle = model.norm.register_forward_hook(lambda module, args, out: captured.update(h=out))
    try:
        model(tokens)
    finally:
        handle.remove()
    return captured["h"]


class ValueModel(nn.Module):
    """V(tokens 0..t) for every position t: a transformer trunk and a linear scalar head.

    Build it from the SFT model (`ValueModel(copy.deepcopy(sft))`, head starts at zero) or from
    a reward model (`ValueModel.from_reward_model(rm)`), which starts with a sensible estimate
    of the final score."""

    def __init__(self, trunk: Transformer, head: nn.Linear | None = None):
        super().__init__()
        self.trunk = trunk
        if head is None:
            head = nn.Linear(trunk.args.dim, 1)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.head = head
        # The trunk's vocabulary projection (if it still has one) is never used for values;
        # freeze it so AdamW's weight decay does not touch it either.
        for p in trunk.output.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_reward_model(cls, reward_model: nn.Module) -> ValueModel:
        """A copy of a reward model (`reward.RewardModel`: `.trunk` and a scalar `.head`) read at
        every position: it starts out predicting roughly the score the answer will get."""
        return cls(copy.deepcopy(reward_model.trunk), copy.deepcopy(reward_model.head))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(final_hidden(self.trunk, tokens)).squeeze(-1).float()


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


@dataclass
class PPOConfig:
    """PPO hyperparameters. Defaults follow Llama 2 (section 3.2.3) where the paper gives them:
    beta 0.01 (7B/13B; 0.005 for 34B/70B), clip 0.2, AdamW (0.9, 0.95), eps 1e-5, weight decay
    0.1, gradient clipping 1.0, and GAE with gamma 1, lambda 0.95 (from the PPO literature; the
    paper does not list them). The learning rates are for toy models (Llama 2 used 1e-6)."""

    beta: float = 0.01
    gamma: float = 1.0
    lam: float = 0.95
    clip_eps: float = 0.2
    value_clip: float = 0.2
    ppo_epochs: int = 4
    minibatch_size: int = 16
    lr: float = 1e-5
    value_lr: float = 1e-4
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0  # keep 1.0: log-probs below are of the untruncated distribution
    max_gen_len: int = 32
    whiten_scores: bool = True
    no_eos_penalty: float = 1.0  # subtracted from the (whitened) score of answers never ending
    eos_id: int = 2
    pad_id: int = 0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"PPO needs temperature > 0 (log-probs of sampled tokens), "
                             f"got {self.temperature}")
        if self.top_p != 1.0:
            raise ValueError(f"top_p must be 1.0 for PPO (the ratio uses the full "
                             f"distribution), got {self.top_p}")
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"clip_eps must lie in (0, 1), got {self.clip_eps}")
        if self.minibatch_size < 1 or self.ppo_epochs < 1:
            raise ValueError(f"minibatch_size ({self.minibatch_size}) and ppo_epochs "
                             f"({self.ppo_epochs}) must be >= 1")


@dataclass
class Rollout:
    """One batch of experience: everything the update needs, computed before any update."""

    prompts: list[list[int]]
    answers: list[list[int]]  # without EOS
    ended: torch.Tensor  # (B,) bool: the answer emitted EOS
    infos: list
    tokens: torch.Tensor  # (B, L)
    mask: torch.Tensor  # (B, L - 1) answer actions (EOS included when emitted)
    logp: torch.Tensor  # (B, L - 1) behaviour policy, at the sampling temperature
    ref_logp: torch.Tensor
    values: torch.Tensor
    entropy: torch.Tensor
    raw_score: torch.Tensor  # (B,) reward function output (logit(R_c) for Llama 2)
    score: torch.Tensor  # (B,) whitened, minus the no-EOS penalty
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    @property
    def kl(self) -> torch.Tensor:
        """Per-row sample estimate of KL(pi || pi_ref): sum over answer tokens of log-ratios."""
        return ((self.logp - self.ref_logp) * self.mask).sum(-1)


RewardFn = Callable[[list, list, list], torch.Tensor]


class PPOTrainer:
    """PPO for a causal LM policy against a frozen reference, with a separate value model.

        trainer = PPOTrainer(policy, ref, ValueModel(copy.deepcopy(sft)), reward_fn, PPOConfig())
        for prompts, infos in batches:
            stats = trainer.iteration(prompts, infos)

    `reward_fn(prompts, answers, infos) -> (B,)` scores token-id lists (answers without EOS),
    e.g. `Llama2Reward`."""

    def __init__(self, policy: Transformer, ref: Transformer, value_model: nn.Module,
                 reward_fn: RewardFn, config: PPOConfig | None = None, seed: int = 0):
        self.policy, self.ref, self.value_model = policy, ref, value_model
        self.reward_fn = reward_fn
        self.config = config or PPOConfig()
        for p in ref.parameters():
            p.requires_grad_(False)
        ref.eval()
        c = self.config
        # Our model has no dropout; train() vs eval() changes nothing, but PPO with dropout
        # would make pi_old != pi at the first minibatch, so we keep everything in eval mode.
        policy.eval()
        value_model.eval()
        adam = {"betas": (0.9, 0.95), "eps": 1e-5, "weight_decay": c.weight_decay}
        self.policy_opt = torch.optim.AdamW(
            [p for p in policy.parameters() if p.requires_grad], lr=c.lr, **adam)
        self.value_opt = torch.optim.AdamW(
            [p for p in value_model.parameters() if p.requires_grad], lr=c.value_lr, **adam)
        self.generator = torch.Generator().manual_seed(seed)
        self.history: list[dict] = []
        self.best_iteration: int | None = None  # set by train(keep_best=...)

    # -- experience -----------------------------------------------------------------------------
    def sample(self, prompts: list[list[int]]) -> tuple[list[list[int]], torch.Tensor]:
        """Answers (without EOS) at the configured temperature, and whether each emitted EOS."""
        c = self.config
        answers = generate(self.policy, prompts, c.max_gen_len, temperature=c.temperature,
                           top_p=1.0, eos_id=c.eos_id, generator=self.generator)
        # generate drops the EOS; an answer shorter than max_gen_len therefore ended with one.
        ended = torch.tensor([len(a) < c.max_gen_len for a in answers])
        return answers, ended

    @torch.no_grad()
    def make_rollout(self, prompts: list[list[int]], answers: list[list[int]],
                     ended: torch.Tensor, infos: list | None = None) -> Rollout:
        """Score given answers and compute log-probs, values, rewards and advantages."""
        c = self.config
        infos = list(infos) if infos is not None else [None] * len(prompts)
        actions = [a + [c.eos_id] if e else a for a, e in zip(answers, ended.tolist())]
        tokens, mask = pack(prompts, actions, c.pad_id)
        logp, entropy = token_logprobs(self.policy, tokens, c.temperature, with_entropy=True)
        ref_logp = token_logprobs(self.ref, tokens, c.temperature)
        values = self.value_model(tokens)[:, :-1] * mask
        raw = self.reward_fn(prompts, answers, infos).float().reshape(-1)
        score = whiten(raw) if c.whiten_scores and len(raw) > 1 else raw.clone()
        score = score - c.no_eos_penalty * (~ended).float()
        rewards = kl_penalised_rewards(score, logp, ref_logp, mask, c.beta)
        advantages, returns = gae(rewards, values, mask, c.gamma, c.lam)
        advantages = masked_whiten(advantages, mask)
        return Rollout(prompts=list(prompts), answers=answers, ended=ended, infos=infos,
                       tokens=tokens, mask=mask, logp=logp * mask, ref_logp=ref_logp * mask,
                       values=values, entropy=entropy, raw_score=raw, score=score,
                       rewards=rewards, advantages=advantages, returns=returns)

    def rollout(self, prompts: list[list[int]], infos: list | None = None) -> Rollout:
        answers, ended = self.sample(prompts)
        return self.make_rollout(prompts, answers, ended, infos)

    # -- learning -------------------------------------------------------------------------------
    def update(self, batch: Rollout, train_policy: bool = True) -> dict:
        """Several epochs of minibatch updates on one rollout. Returns averaged statistics plus
        `first_ratio_dev`, max |rho - 1| at the first minibatch (0 up to rounding, by design).
        With `train_policy=False` only the value model learns (see `warm_up_value`)."""
        c = self.config
        n = len(batch.prompts)
        stats: dict[str, list[float]] = {k: [] for k in (
            "policy_loss", "value_loss", "clip_frac", "value_clip_frac", "approx_kl")}
        first_ratio_dev = None
        for _ in range(c.ppo_epochs):
            order = torch.randperm(n, generator=self.generator)
            for start in range(0, n, c.minibatch_size):
                idx = order[start:start + c.minibatch_size]
                mask = batch.mask[idx]
                # Trim trailing columns no row of this minibatch uses.
                width = int(mask.any(0).nonzero().max()) + 2
                tokens, mask = batch.tokens[idx, :width], mask[:, :width - 1]
                with torch.set_grad_enabled(train_policy):
                    logp = token_logprobs(self.policy, tokens, c.temperature)
                pg_loss, clip_frac, ratio = clipped_policy_loss(
                    logp, batch.logp[idx, :width - 1], batch.advantages[idx, :width - 1], mask,
                    c.clip_eps)
                if first_ratio_dev is None:
                    first_ratio_dev = float(((ratio.detach() - 1).abs() * mask).max())
                if train_policy:
                    self.policy_opt.zero_grad(set_to_none=True)
                    pg_loss.backward()
                    nn.utils.clip_grad_norm_(self.policy.parameters(), c.max_grad_norm)
                    self.policy_opt.step()

                values = self.value_model(tokens)[:, :-1]
                vf_loss, vf_clip = clipped_value_loss(
                    values, batch.values[idx, :width - 1], batch.returns[idx, :width - 1], mask,
                    c.value_clip)
                self.value_opt.zero_grad(set_to_none=True)
                vf_loss.backward()
                nn.utils.clip_grad_norm_(self.value_model.parameters(), c.max_grad_norm)
                self.value_opt.step()

                with torch.no_grad():
                    log_ratio = (logp - batch.logp[idx, :width - 1]).detach()
                    # (rho - 1) - log rho: a low-variance, non-negative estimate of KL(old||new).
                    approx_kl = masked_mean(log_ratio.exp() - 1 - log_ratio, mask)
                for key, value in zip(stats, (pg_loss, vf_loss, clip_frac, vf_clip, approx_kl)):
                    stats[key].append(float(value.detach()))
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out["first_ratio_dev"] = first_ratio_dev
        return out

    def warm_up_value(self, prompts: list[list[int]], infos: list | None = None) -> dict:
        """One rollout and value-model updates only, the policy untouched. A value model that
        starts far from the returns gives noisy advantages; a few of these before PPO proper
        let it learn what each kind of prompt usually scores (a per-prompt baseline)."""
        batch = self.rollout(prompts, infos)
        return {**rollout_stats(batch), **self.update(batch, train_policy=False)}

    def iteration(self, prompts: list[list[int]], infos: list | None = None) -> dict:
        """Rollout, then update; returns (and appends to `history`) the iteration's log."""
        batch = self.rollout(prompts, infos)
        log = rollout_stats(batch)
        log.update(self.update(batch))
        # Iterations count from 0; the evaluation `train` logs before training is entry -1.
        log["iteration"] = sum(1 for h in self.history if h["iteration"] >= 0)
        self.history.append(log)
        return log

    def train(self, prompt_batches: Callable[[int], tuple[list, list]], iterations: int,
              eval_fn: Callable[[Transformer], dict] | None = None, eval_every: int = 1,
              on_log: Callable[[dict], None] | None = None,
              keep_best: Callable[[dict], float] | None = None) -> list[dict]:
        """`iterations` PPO iterations; `prompt_batches(i)` returns (prompts, infos) of
        iteration i. `eval_fn(policy) -> dict` (ground-truth metrics) runs once before training
        (a history entry with iteration -1) and after every `eval_every`-th iteration.

        Early stopping: `keep_best(metrics) -> float` scores each evaluation (higher is better;
        score *validation* prompts, so the test figures stay unbiased). The policy ends with the
        weights of the best-scoring evaluation, the start included, and `best_iteration` says
        after how many iterations they were taken (0: nothing beat the starting policy); the
        optimiser keeps the state of the last iteration. With an imperfect reward model the proxy
        reward can keep rising while the true quality falls (chapter 12), so the last iterate is
        not necessarily the best one."""
        if keep_best is not None and eval_fn is None:
            raise ValueError("keep_best scores the evaluations of eval_fn; pass eval_fn as well")
        best: tuple[float, int, dict] | None = None

        def consider(metrics: dict, completed: int) -> None:
            nonlocal best
            if keep_best is None:
                return
            score = float(keep_best(metrics))
            if best is None or score > best[0]:  # a tie keeps the earlier, closer to the start
                weights = {k: v.detach().clone() for k, v in self.policy.state_dict().items()}
                best = (score, completed, weights)

        if eval_fn is not None:
            start = {"iteration": -1, **eval_fn(self.policy)}
            self.history.append(start)
            consider(start, 0)
        for i in range(iterations):
            prompts, infos = prompt_batches(i)
            log = self.iteration(prompts, infos)
            if eval_fn is not None and ((i + 1) % eval_every == 0 or i + 1 == iterations):
                log.update(eval_fn(self.policy))
                consider(log, log["iteration"] + 1)
            if on_log is not None:
                on_log(log)
        if best is not None:
            self.policy.load_state_dict(best[2])
            self.best_iteration = best[1]
        return self.history


def rollout_stats(batch: Rollout) -> dict:
    """What to watch each iteration: the reward (before whitening), the KL to the reference per
    answer, the policy's entropy per token, answer length and how many answers ended."""
    lengths = batch.mask.sum(-1).float()
    return {
        "reward": float(batch.raw_score.mean()),
        "kl": float(batch.kl.mean()),
        "entropy": float(masked_mean(batch.entropy, batch.mask)),
        "answer_len": float(lengths.mean()),
        "eos_rate": float(batch.ended.float().mean()),
        "value_mean": float(masked_mean(batch.values, batch.mask)),
    }


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy with gradients off, in eval mode: the reference policy pi_ref."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


@torch.no_grad()
def sampled_kl(policy: Transformer, ref: Transformer, prompts: Sequence[Sequence[int]],
               max_gen_len: int, temperature: float = 1.0, eos_id: int = 2,
               generator: torch.Generator | None = None, batch_size: int = 64) -> torch.Tensor:
    """Monte-Carlo KL(pi || pi_ref) per prompt (N,): sample an answer from the policy and sum
    log pi - log pi_ref over its tokens (EOS included). At temperature 1 its mean is an unbiased
    estimate of the sequence-level KL, the number PPO's penalty keeps small."""
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = [list(p) for p in prompts[start:start + batch_size]]
        answers = generate(policy, chunk, max_gen_len, temperature=temperature, top_p=1.0,
                           eos_id=eos_id, generator=generator)
        actions = [a + [eos_id] if len(a) < max_gen_len else a for a in answers]
        tokens, mask = pack(chunk, actions)
        diff = token_logprobs(policy, tokens, temperature) - token_logprobs(ref, tokens,
                                                                            temperature)
        out.append((diff * mask).sum(-1))
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# Llama 2-Chat at toy scale: the book's assistant data, reward models and graders
# ---------------------------------------------------------------------------------------------


def chat_prompts(tokenizer, examples: Sequence) -> list[list[int]]:
    """Prompt token ids (chat format, ending with [/INST]) of `data.assistant` examples."""
    from . import chat

    return [chat.encode_dialog(tokenizer, ex.dialog) for ex in examples]


# Raw scores the gold judge gives the four quality levels (0 unhelpful ... 3 correct): in the
# reward rule's (0, 1) scale, sigmoid(score) = 0.05, 0.27, 0.73, 0.95.
GOLD_LEVEL_SCORES = (-3.0, -1.0, 1.0, 3.0)


def gold_helpfulness(tokenizer) -> ScoreFn:
    """A helpfulness scorer that *is* the annotator: the ground-truth quality level of each
    answer (`data.assistant.quality_level`) as a raw score (`GOLD_LEVEL_SCORES`).

    In the toy world the judgement Meta's annotators made, and its reward model learned to
    imitate, can be computed. Using it in place of the learned helpfulness model separates two
    questions: does the PPO machinery improve the policy when the reward is right, and how far
    does a learned (proxy) reward model get it there? (Gao et al. 2022 call them the gold and the
    proxy reward models.) For an unsafe prompt the rule uses the safety model, not this."""
    from .data.assistant import quality_level

    def score(prompts, answers, infos):
        levels = [quality_level(ex, tokenizer.decode(a).strip())
                  for ex, a in zip(infos, answers)]
        return torch.tensor([GOLD_LEVEL_SCORES[level] for level in levels])

    return score


def chat_reward(tokenizer, helpful_rm: nn.Module | ScoreFn, safety_rm: nn.Module | ScoreFn,
                threshold: float = 0.15) -> Llama2Reward:
    """Llama 2's combined reward from the book's two reward models (`reward.RewardModel`), or
    from a scorer function in the place of either (e.g. `gold_helpfulness`).

    The infos passed along with the prompts are the `AssistantExample`s; a prompt counts as
    unsafe (IS_SAFETY in the paper) when its task is "unsafe". Answers are decoded to text and
    scored exactly as the reward models were trained: prompt dialog + answer in the chat format,
    reward read at the closing EOS.

    A sampled answer can contain a chat tag such as `[INST]` (the policy writing the next turn
    itself), which no message may contain, so it cannot be put in a dialog and scored. Such an
    answer gets the lowest score of the well-formed answers of its batch from each model (0
    when there are none): it is never preferred, and PPO does not crash on it."""
    from .chat import SPECIAL_TAGS
    from .reward import score_texts

    def scorer(rm):
        def score(prompts, answers, infos):
            texts = [tokenizer.decode(a).strip() for a in answers]
            ok = [not any(tag in t for tag in SPECIAL_TAGS) for t in texts]
            out = torch.zeros(len(texts))
            keep = [i for i, good in enumerate(ok) if good]
            if keep:
                scores = score_texts(rm, tokenizer, [infos[i].dialog for i in keep],
                                     [texts[i] for i in keep]).float()
                out.fill_(float(scores.min()))
                out[keep] = scores
            return out
        return score

    def as_scorer(judge):
        return scorer(judge) if isinstance(judge, nn.Module) else judge

    return Llama2Reward(as_scorer(helpful_rm), as_scorer(safety_rm), threshold,
                        is_unsafe=lambda ex: ex.task == "unsafe")


def chat_metrics(model: Transformer, tokenizer, examples: Sequence,
                 max_gen_len: int = 32) -> dict[str, float]:
    """Ground-truth metrics of greedy answers (`sft.evaluate`): accuracy per task, plus
    `accuracy` (the share of all examples answered right: exact match for the helpful and
    borderline tasks, a refusal for unsafe requests), `helpful_accuracy` (mean over the helpful
    tasks), `refusal_rate` on unsafe requests, `unsafe_compliance` = 1 - refusal_rate, and
    `false_refusal_rate` on borderline ones."""
    from .data.assistant import HELPFUL_TASKS
    from .sft import evaluate

    metrics, answers = evaluate(model, tokenizer, examples, max_gen_len)
    metrics["accuracy"] = sum(ex.grade(a) for ex, a in zip(examples, answers)) / len(examples)
    helpful = [metrics[t] for t in HELPFUL_TASKS if t in metrics]
    if helpful:
        metrics["helpful_accuracy"] = sum(helpful) / len(helpful)
    if "refusal_rate" in metrics:
        metrics["unsafe_compliance"] = 1.0 - metrics["refusal_rate"]
    return metrics


__all__ = [
    "GOLD_LEVEL_SCORES",
    "Llama2Reward",
    "PPOConfig",
    "PPOTrainer",
    "Rollout",
    "ValueModel",
    "chat_metrics",
    "chat_prompts",
    "chat_reward",
    "clipped_policy_loss",
    "clipped_value_loss",
    "combine_rewards",
    "final_hidden",
    "frozen_copy",
    "gae",
    "gold_helpfulness",
    "kl_penalised_rewards",
    "last_index",
    "llama2_score",
    "masked_mean",
    "masked_whiten",
    "pack",
    "rollout_stats",
    "sampled_kl",
    "token_logprobs",
    "whiten",
]
