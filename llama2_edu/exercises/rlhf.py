"""Checks for chapters 12-13 (RLHF with PPO; rejection sampling and DPO).

    check_combine_rewards(fn)   fn(helpful, safety, is_unsafe, threshold) -> Llama 2's R_c
    check_gae(fn)               fn(rewards, values, gamma, lam) -> advantages of one answer
    check_ppo_clip_loss(fn)     fn(logp, old_logp, advantages, clip_eps) -> clipped surrogate loss
    check_answer_logprob(fn)    fn(logits, tokens, answer_start) -> log p(answer | prompt)
    check_dpo_loss(fn)          fn(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta) -> loss
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .. import dpo, ppo
from ._harness import call_learner, compare, passed

__all__ = ["check_answer_logprob", "check_combine_rewards", "check_dpo_loss", "check_gae",
           "check_ppo_clip_loss"]


def _first_match(got: torch.Tensor, variants, atol: float = 1e-5) -> str | None:
    for value, hint in variants:
        if got.shape == value.shape and torch.allclose(got.float(), value.float(), atol=atol,
                                                       rtol=1e-4):
            return hint
    return None


def check_combine_rewards(fn: Callable) -> bool:
    """`fn(helpful, safety, is_unsafe, threshold)` with rewards in (0, 1) and a bool mask (B,)
    must return R_c = safety where the prompt is unsafe or safety < threshold, else helpful."""
    exercise = "check_combine_rewards"
    gen = torch.Generator().manual_seed(12)
    for n, threshold in [(64, 0.15), (33, 0.4)]:
        helpful, safety = torch.rand(n, generator=gen), torch.rand(n, generator=gen)
        safety[:4] = threshold  # the boundary: exactly at the threshold is *not* below it
        unsafe = torch.rand(n, generator=gen) < 0.3
        got = call_learner(fn, helpful.clone(), safety.clone(), unsafe.clone(), threshold,
                           exercise=exercise)
        below = safety < threshold
        variants = [
            (torch.where(unsafe & below, safety, helpful),
             "'and' instead of 'or': the safety reward is used when the prompt is unsafe OR the "
             "answer looks unsafe (R_s < threshold)"),
            (torch.where(unsafe, safety, helpful),
             "the threshold rule is missing: on a benign prompt an answer with R_s < threshold "
             "must still get R_s, so harmful answers to innocent prompts are not rewarded"),
            (torch.where(below, safety, helpful),
             "unsafe prompts must always use the safety reward, whatever its value"),
            (torch.where(unsafe | (safety <= threshold), safety, helpful),
             "the comparison is strict: R_s < threshold (R_s equal to it uses helpfulness)"),
            (torch.where(unsafe | (helpful < threshold), safety, helpful),
             "the threshold applies to the safety reward, not the helpfulness reward"),
            (torch.where(unsafe | below, helpful, safety), "the two branches are swapped"),
        ]
        compare(got, ppo.combine_rewards(helpful, safety, unsafe, threshold), exercise=exercise,
                diagnose=lambda g, v=variants: _first_match(g, v))
    return passed(exercise, "safety when the prompt is unsafe or R_s < threshold")


def _gae_1d(rewards, values, gamma, lam):
    mask = torch.ones(1, len(rewards), dtype=torch.bool)
    adv, _ = ppo.gae(rewards[None], values[None], mask, gamma, lam)
    return adv[0]


def _gae_loop(rewards, values, gamma, lam, value_after_end):
    """GAE with an explicit value after the last token (the mistake: bootstrapping from V_T)."""
    out, running = torch.zeros_like(rewards), torch.tensor(0.0)
    for t in reversed(range(len(rewards))):
        next_v = values[t + 1] if t + 1 < len(rewards) else value_after_end
        running = rewards[t] + gamma * next_v - values[t] + gamma * lam * running
        out[t] = running
    return out


def check_gae(fn: Callable) -> bool:
    """`fn(rewards, values, gamma, lam)`, 1-D tensors over the tokens of one answer, must return
    the GAE advantages: delta_t = r_t + gamma V_{t+1} - V_t (V after the last token is 0),
    A_t = delta_t + gamma lam A_{t+1}."""
    exercise = "check_gae"
    gen = torch.Generator().manual_seed(7)
    for steps, gamma, lam in [(6, 1.0, 0.95), (9, 0.9, 0.8)]:
        rewards = torch.randn(steps, generator=gen)
        values = torch.randn(steps, generator=gen)
        got = call_learner(fn, rewards.clone(), values.clone(), gamma, lam, exercise=exercise)
        deltas = rewards + gamma * torch.cat([values[1:], values.new_zeros(1)]) - values
        variants = [
            (_gae_1d(rewards, values, gamma, 1.0), "lam is not used (this is lam = 1: the "
                                                  "Monte-Carlo return minus V)"),
            (deltas, "these are the one-step deltas; accumulate them backwards: "
                     "A_t = delta_t + gamma * lam * A_{t+1}"),
            (_gae_1d(rewards, torch.zeros_like(values), gamma, lam),
             "the values are ignored: delta_t = r_t + gamma V_{t+1} - V_t"),
            (torch.cumsum(deltas, 0),
             "the sum runs forwards; advantages accumulate from the end of the answer"),
            (_gae_loop(rewards, values, gamma, lam, values[-1]),
             "the last token bootstraps from a value after the answer; there is none: "
             "delta_T = r_T - V_T"),
        ]
        if gamma != 1.0:
            variants.append((_gae_1d(rewards, values, 1.0, lam),
                             "gamma is missing from the recursion or from delta"))
        compare(got, _gae_1d(rewards, values, gamma, lam), exercise=exercise, atol=1e-5,
                rtol=1e-4, diagnose=lambda g, v=variants: _first_match(g, v))
    return passed(exercise, "advantages accumulated backwards with gamma * lam")


def check_ppo_clip_loss(fn: Callable) -> bool:
    """`fn(logp, old_logp, advantages, clip_eps)` (all (B, T), every token counts) must return
    the scalar PPO loss mean(max(-A rho, -A clip(rho, 1 - eps, 1 + eps))), rho = exp(logp - old)."""
    exercise = "check_ppo_clip_loss"
    gen = torch.Generator().manual_seed(5)
    for shape, eps in [((4, 7), 0.2), ((3, 5), 0.1)]:
        old = torch.randn(shape, generator=gen) - 2
        logp = old + 0.5 * torch.randn(shape, generator=gen)  # many ratios outside the range
        adv = torch.randn(shape, generator=gen)
        got = call_learner(fn, logp.clone(), old.clone(), adv.clone(), eps, exercise=exercise)
        ratio = torch.exp(logp - old)
        clipped = ratio.clamp(1 - eps, 1 + eps)
        variants = [
            ((-adv * ratio).mean(), "no clipping: take the max of -A rho and -A clip(rho)"),
            ((-adv * clipped).mean(), "only the clipped term: PPO takes the pessimistic "
                                      "(larger) of the clipped and unclipped losses"),
            (torch.minimum(-adv * ratio, -adv * clipped).mean(),
             "min of the losses is the optimistic bound; the loss is max(-A rho, -A clip(rho)) "
             "(= -min of the objectives)"),
            (torch.maximum(adv * ratio, adv * clipped).mean(),
             "sign: the loss is the negative of the objective A * rho"),
            (torch.maximum(-adv * (logp - old), -adv * (logp - old).clamp(-eps, eps)).mean(),
             "rho is the probability ratio exp(logp - old_logp), not the log-ratio"),
        ]
        compare(got, ppo.clipped_policy_loss(logp, old, adv, torch.ones(shape, dtype=torch.bool),
                                             eps)[0],
                exercise=exercise, atol=1e-5, rtol=1e-4,
                diagnose=lambda g, v=variants: _first_match(g, v))
    return passed(exercise, "pessimistic clipped surrogate")


def check_answer_logprob(fn: Callable) -> bool:
    """`fn(logits, tokens, answer_start)` with logits (T, vocab) of one sequence tokens (T,) must
    return log p(tokens[answer_start:] | tokens[:answer_start]) (a 0-d tensor): each answer token
    scored by the logits one position before it."""
    exercise = "check_answer_logprob"
    gen = torch.Generator().manual_seed(9)
    for length, vocab, start in [(10, 13, 4), (7, 21, 1)]:
        logits = torch.randn(length, vocab, generator=gen)
        tokens = torch.randint(0, vocab, (length,), generator=gen)
        got = call_learner(fn, logits.clone(), tokens.clone(), start, exercise=exercise)
        logp = F.log_softmax(logits, -1)
        pos = torch.arange(length)
        variants = [
            (logp[pos[start:], tokens[start:]].sum(),
             "off by one: the token at t is scored by the logits at t - 1 (the distribution "
             "it was drawn from), not by the logits at t"),
            (logp[pos[:-1], tokens[1:]].sum(),
             "the prompt tokens are counted too; sum over the answer tokens only"),
            (logits[pos[start - 1:-1], tokens[start:]].sum(),
             "raw logits, not log-probabilities: apply log_softmax over the vocabulary"),
            (F.log_softmax(logits, 0)[pos[start - 1:-1], tokens[start:]].sum(),
             "log_softmax over the wrong dimension: normalise over the vocabulary (last dim)"),
            (logp[pos[start - 1:-1], tokens[start:]].mean(), "a sum over tokens, not a mean"),
        ]
        expected = logp[pos[start - 1:-1], tokens[start:]].sum()
        compare(got, expected, exercise=exercise, atol=1e-5, rtol=1e-5,
                diagnose=lambda g, v=variants: _first_match(g, v))
    return passed(exercise, "answer tokens scored by the previous position's logits")


def check_dpo_loss(fn: Callable) -> bool:
    """`fn(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)` with sequence log-probs (B,)
    must return the mean DPO loss -log sigmoid(beta ((pi_c - ref_c) - (pi_r - ref_r)))."""
    exercise = "check_dpo_loss"
    gen = torch.Generator().manual_seed(13)
    for n, beta in [(16, 0.1), (9, 0.5)]:
        pc, pr, rc, rr = (torch.randn(n, generator=gen) * 3 - 20 for _ in range(4))
        got = call_learner(fn, pc.clone(), pr.clone(), rc.clone(), rr.clone(), beta,
                           exercise=exercise)
        margin = (pc - rc) - (pr - rr)
        variants = [
            (-F.logsigmoid(margin).mean(), "beta is missing: the margin is scaled by beta"),
            (-F.logsigmoid(-beta * margin).mean(), "chosen and rejected are swapped"),
            (-F.logsigmoid(beta * (pc - pr)).mean(),
             "the reference log-probs are missing: the implicit reward is beta (log pi - log "
             "pi_ref)"),
            (-torch.sigmoid(beta * margin).mean(), "the log is missing: -log sigmoid(...)"),
            (-F.logsigmoid(beta * margin).sum(), "average over pairs, not a sum"),
            (-F.logsigmoid(beta * ((pc - rc) + (pr - rr))).mean(),
             "the rejected answer's reward is subtracted, not added"),
        ]
        compare(got, dpo.dpo_loss(pc, pr, rc, rr, beta)[0], exercise=exercise, atol=1e-5,
                rtol=1e-4, diagnose=lambda g, v=variants: _first_match(g, v))
    return passed(exercise, "-log sigmoid(beta * margin of implicit rewards)")
