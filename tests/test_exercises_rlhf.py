"""The exercise checks of chapters 12-13: they pass on the reference and fail, with the right
hint, on the mistakes learners typically make."""

import pytest
import torch
import torch.nn.functional as F
from conftest import stub

from llama2_edu.exercises import (
    check_answer_logprob,
    check_combine_rewards,
    check_dpo_loss,
    check_gae,
    check_ppo_clip_loss,
)
from llama2_edu.exercises._harness import ExerciseFailed


def combine(h, s, unsafe, threshold, op="or", strict=True):
    below = s < threshold if strict else s <= threshold
    use = unsafe | below if op == "or" else unsafe & below
    return torch.where(use, s, h)


@pytest.mark.parametrize("fn, hint", [
    (lambda h, s, u, t: combine(h, s, u, t, op="and"), "'and' instead of 'or'"),
    (lambda h, s, u, t: torch.where(u, s, h), "threshold rule is missing"),
    (lambda h, s, u, t: combine(h, s, u, t, strict=False), "strict"),
    (lambda h, s, u, t: torch.where(u | (s < t), h, s), "swapped"),
])
def test_combine_rewards_check(fn, hint):
    assert check_combine_rewards(combine)
    with pytest.raises(ExerciseFailed, match="not implemented"):
        check_combine_rewards(stub)
    with pytest.raises(ExerciseFailed, match=hint):
        check_combine_rewards(fn)


def gae(r, v, gamma, lam, *, forward=False, bootstrap_last=False, use_lam=True):
    adv, running = torch.zeros_like(r), 0.0
    steps = range(len(r)) if forward else reversed(range(len(r)))
    for t in steps:
        next_v = v[t + 1] if t + 1 < len(r) else (v[t] if bootstrap_last else 0.0)
        running = r[t] + gamma * next_v - v[t] + gamma * (lam if use_lam else 1.0) * running
        adv[t] = running
    return adv


@pytest.mark.parametrize("fn, hint", [
    (lambda r, v, g, lam: gae(r, v, g, lam, use_lam=False), "lam is not used"),
    (lambda r, v, g, lam: gae(r, v, g, lam, bootstrap_last=True), "bootstraps"),
    (lambda r, v, g, lam: gae(r, v, g, 0.0), "one-step deltas"),
    (lambda r, v, g, lam: gae(r, torch.zeros_like(v), g, lam), "values are ignored"),
])
def test_gae_check(fn, hint):
    assert check_gae(gae)
    with pytest.raises(ExerciseFailed, match="not implemented"):
        check_gae(stub)
    with pytest.raises(ExerciseFailed, match=hint):
        check_gae(fn)


def ppo_loss(logp, old, adv, eps, *, reduce=torch.maximum, clip=True, sign=-1.0):
    ratio = torch.exp(logp - old)
    clipped = ratio.clamp(1 - eps, 1 + eps) if clip else ratio
    return reduce(sign * adv * ratio, sign * adv * clipped).mean()


@pytest.mark.parametrize("fn, hint", [
    (lambda lp, o, a, e: ppo_loss(lp, o, a, e, clip=False), "no clipping"),
    (lambda lp, o, a, e: ppo_loss(lp, o, a, e, reduce=torch.minimum), "optimistic"),
    (lambda lp, o, a, e: ppo_loss(lp, o, a, e, sign=1.0), "sign"),
    (lambda lp, o, a, e: (-a * torch.exp(lp - o).clamp(1 - e, 1 + e)).mean(), "only the clipped"),
])
def test_ppo_clip_loss_check(fn, hint):
    assert check_ppo_clip_loss(ppo_loss)
    with pytest.raises(ExerciseFailed, match="not implemented"):
        check_ppo_clip_loss(stub)
    with pytest.raises(ExerciseFailed, match=hint):
        check_ppo_clip_loss(fn)


def answer_logprob(logits, tokens, start, shift=1, dim=-1):
    logp = F.log_softmax(logits, dim)
    pos = torch.arange(start - shift, len(tokens) - shift)
    return logp[pos, tokens[start:]].sum()


@pytest.mark.parametrize("fn, hint", [
    (lambda lg, tk, s: answer_logprob(lg, tk, s, shift=0), "off by one"),
    (lambda lg, tk, s: answer_logprob(lg, tk, 1), "prompt tokens are counted"),
    (lambda lg, tk, s: answer_logprob(lg, tk, s, dim=0), "wrong dimension"),
])
def test_answer_logprob_check(fn, hint):
    assert check_answer_logprob(answer_logprob)
    with pytest.raises(ExerciseFailed, match="not implemented"):
        check_answer_logprob(stub)
    with pytest.raises(ExerciseFailed, match=hint):
        check_answer_logprob(fn)


def dpo(pc, pr, rc, rr, beta):
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()


@pytest.mark.parametrize("fn, hint", [
    (lambda pc, pr, rc, rr, b: dpo(pc, pr, rc, rr, 1.0), "beta is missing"),
    (lambda pc, pr, rc, rr, b: dpo(pr, pc, rr, rc, b), "swapped"),
    (lambda pc, pr, rc, rr, b: dpo(pc, pr, 0 * rc, 0 * rr, b), "reference log-probs"),
    (lambda pc, pr, rc, rr, b: -torch.sigmoid(b * ((pc - rc) - (pr - rr))).mean(), "log is"),
])
def test_dpo_loss_check(fn, hint):
    assert check_dpo_loss(dpo)
    with pytest.raises(ExerciseFailed, match="not implemented"):
        check_dpo_loss(stub)
    with pytest.raises(ExerciseFailed, match=hint):
        check_dpo_loss(fn)
