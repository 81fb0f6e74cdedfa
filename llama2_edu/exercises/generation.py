"""Checks for chapter 08 (generation).

    check_top_p(fn)        fn(probs, p) -> probs with the tail beyond the nucleus zeroed and the
                           rest renormalised, Meta's rule (llama2_edu.top_p_filter)
    check_sample_next(fn)  fn(logits, temperature, top_p, generator) -> one token id per row:
                           greedy at temperature 0, otherwise softmax(logits / T), top-p, sample

The top-p check is exact; the sampling check is statistical (thousands of seeded draws compared
with the distribution they should follow), so it holds for any correct way of sampling.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..generation import top_p_filter
from ._harness import ExerciseFailed, call_learner, compare, passed

__all__ = ["check_top_p", "check_sample_next"]


# ---- top-p -----------------------------------------------------------------------------------
def _top_p_variant(probs, p, *, crossing=True, renormalise=True, sort=True):
    if sort:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    else:
        sorted_probs, order = probs, torch.arange(probs.shape[-1]).expand_as(probs)
    cumulative = torch.cumsum(sorted_probs, dim=-1)
    drop = (cumulative - sorted_probs > p) if crossing else (cumulative > p)
    kept = sorted_probs.masked_fill(drop, 0.0)
    out = torch.zeros_like(probs).scatter(-1, order, kept)
    if renormalise:
        out = out / out.sum(-1, keepdim=True).clamp_min(1e-30)
    return out


def _top_p_hint(probs, p, got) -> str | None:
    variants = [
        (dict(crossing=False), "the token that crosses p is dropped: Meta keeps every token "
                               "whose *preceding* cumulative mass is <= p, so the nucleus "
                               "always reaches p (mask where cumsum - prob > p)"),
        (dict(renormalise=False), "the kept probabilities are not renormalised: divide by "
                                  "their sum so that each row sums to 1 again"),
        (dict(crossing=False, renormalise=False),
         "the token that crosses p is dropped, and the rest is not renormalised"),
        (dict(sort=False), "the probabilities are not sorted: the nucleus is the *most likely* "
                           "tokens, so sort descending before the cumulative sum"),
        (dict(sort=False, renormalise=False), "not sorted and not renormalised"),
    ]
    for options, hint in variants:
        value = _top_p_variant(probs, p, **options)
        if got.shape == value.shape and torch.allclose(got, value, atol=1e-6):
            return hint
    sorted_ref = torch.sort(top_p_filter(probs, p), dim=-1, descending=True).values
    if got.shape == sorted_ref.shape and torch.allclose(got, sorted_ref, atol=1e-6):
        return "the result is in sorted order: scatter the kept probabilities back to their " \
               "token positions"
    return None


def check_top_p(fn: Callable) -> bool:
    """`fn(probs, p)` with probs (batch, vocab) summing to 1 per row must zero every token
    outside the nucleus (the smallest set of most likely tokens whose mass reaches p: sort
    descending and keep a token while the mass *before* it is <= p) and renormalise."""
    exercise = "check_top_p"
    gen = torch.Generator().manual_seed(8)
    cases = [(torch.tensor([[0.2, 0.5, 0.3]]), 0.6), (torch.tensor([[0.2, 0.5, 0.3]]), 0.4),
             (torch.tensor([[0.1, 0.1, 0.6, 0.2]]), 0.9), (torch.tensor([[0.25] * 4]), 1.0)]
    for vocab, temperature, p in [(10, 1.0, 0.9), (50, 0.7, 0.5), (200, 2.0, 0.95), (7, 0.3, 0.1)]:
        logits = torch.randn(3, vocab, generator=gen) / temperature
        cases.append((torch.softmax(logits, -1), p))
    for probs, p in cases:
        got = call_learner(fn, probs.clone(), p, exercise=exercise)
        compare(got, top_p_filter(probs, p), exercise=f"{exercise} (p={p})", atol=1e-6,
                rtol=1e-5, diagnose=lambda g, probs=probs, p=p: _top_p_hint(probs, p, g))
    return passed(exercise, "keeps the crossing token, renormalises")


# ---- sampling --------------------------------------------------------------------------------
def _expected_probs(logits, temperature, top_p):
    probs = torch.softmax(logits / temperature, -1)
    return top_p_filter(probs, top_p) if top_p < 1 else probs


def _frequencies(fn, logits, temperature, top_p, n, seed, exercise):
    rows = logits.expand(n, -1).clone()
    got = call_learner(fn, rows, temperature, top_p, torch.Generator().manual_seed(seed),
                       exercise=exercise)
    if not isinstance(got, torch.Tensor):
        raise ExerciseFailed(f"{exercise}: expected a tensor of token ids, got "
                             f"{type(got).__name__}")
    got = got.reshape(-1) if got.shape == (n, 1) else got
    if got.shape != (n,):
        raise ExerciseFailed(f"{exercise}: expected one id per row, shape ({n},), got "
                             f"{tuple(got.shape)}")
    if got.dtype not in (torch.int64, torch.int32):
        raise ExerciseFailed(f"{exercise}: expected integer token ids, got {got.dtype}")
    return torch.bincount(got, minlength=logits.shape[-1]).float() / n, got


def check_sample_next(fn: Callable) -> bool:
    """`fn(logits, temperature, top_p, generator)` with logits (batch, vocab) must return one
    token id per row (int64, shape (batch,)): the argmax when temperature == 0, otherwise a draw
    from top_p_filter(softmax(logits / temperature), top_p), using `generator`."""
    exercise = "check_sample_next"
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(5, 12, generator=gen) * 2
    try:
        got = call_learner(fn, logits.clone(), 0.0, 0.9, torch.Generator().manual_seed(0),
                           exercise=exercise)
    except (RuntimeError, ValueError, ZeroDivisionError) as e:
        raise ExerciseFailed(f"{exercise}: temperature 0 must be greedy (the argmax of each row) "
                             f"but the function raised {type(e).__name__}: {e}. Hint: dividing "
                             f"by a temperature of 0 gives inf/nan, so handle 0 first") from None
    if not isinstance(got, torch.Tensor) or got.reshape(-1).shape != (5,):
        raise ExerciseFailed(f"{exercise}: temperature 0 must return one id per row, shape (5,)")
    if torch.isnan(torch.as_tensor(got, dtype=torch.float)).any() or \
            not torch.equal(got.reshape(-1).long(), logits.argmax(-1)):
        raise ExerciseFailed(f"{exercise}: temperature 0 must be greedy (the argmax of each "
                             f"row); dividing by 0 gives inf/nan, so handle it first")

    row = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0, -3.0])
    n = 20000
    tolerance = 0.02  # about 5 standard deviations of a frequency near 0.3 at 20k draws
    for temperature, top_p in [(1.0, 1.0), (0.5, 1.0), (2.0, 1.0), (1.0, 0.7), (1.5, 0.5)]:
        freq, draws = _frequencies(fn, row, temperature, top_p, n, 1, exercise)
        expected = _expected_probs(row, temperature, top_p)
        error = (freq - expected).abs().max().item()
        if error > tolerance:
            message = (f"{exercise}: at temperature={temperature}, top_p={top_p} the draws "
                       f"follow {[round(x, 2) for x in freq.tolist()]}, expected "
                       f"{[round(x, 2) for x in expected.tolist()]}")
            candidates = [
                (_expected_probs(row, 1.0, top_p), "the temperature is ignored: divide the "
                                                   "logits by it before the softmax"),
                (_expected_probs(row * temperature, 1.0, top_p),
                 "the logits are multiplied by the temperature; divide them by it"),
                (_expected_probs(row, temperature, 1.0), "top_p is ignored: filter the "
                                                         "probabilities with the nucleus first"),
                (torch.nn.functional.one_hot(row.argmax(), len(row)).float(),
                 "always the argmax: sample with torch.multinomial instead"),
                (torch.full_like(row, 1 / len(row)), "uniform draws: sample from the "
                                                     "probabilities, not from the vocabulary"),
            ]
            for probs, hint in candidates:
                if (freq - probs).abs().max().item() < tolerance:
                    message += f". Hint: {hint}"
                    break
            raise ExerciseFailed(message)
        again = _frequencies(fn, row, temperature, top_p, n, 1, exercise)[1]
        if not torch.equal(draws, again):
            raise ExerciseFailed(f"{exercise}: the same seeded generator gave different draws: "
                                 f"pass `generator` to torch.multinomial")
    return passed(exercise, "greedy, temperature and top-p, seeded")
