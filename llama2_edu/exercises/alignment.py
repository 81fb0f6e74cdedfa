"""Chapters 10-11: the SFT loss mask, packing, the reward at the last real token, and Llama 2's
ranking loss with a margin."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..reward import RATINGS, margins_for, ranking_loss, reward_at_last_token
from ..sft import IGNORE_INDEX, pack, shift_labels
from ._harness import ExerciseFailed, call_learner, compare, passed


def _random_dialog_tokens(gen: torch.Generator, n_turns: int) -> tuple[list[int], list[bool]]:
    """Token ids and answer flags shaped like chat turns: BOS, prompt, answer, EOS."""
    ids: list[int] = []
    flags: list[bool] = []
    for _ in range(n_turns):
        n_prompt = int(torch.randint(3, 8, (1,), generator=gen))
        n_answer = int(torch.randint(1, 5, (1,), generator=gen))
        ids += [1] + torch.randint(3, 100, (n_prompt + n_answer,), generator=gen).tolist() + [2]
        flags += [False] * (1 + n_prompt) + [True] * (n_answer + 1)
    return ids, flags


def _as_list(got, exercise: str) -> list[int]:
    if isinstance(got, torch.Tensor):
        got = got.tolist()
    if not isinstance(got, (list, tuple)):
        raise ExerciseFailed(f"{exercise}: return a list (or 1-D tensor) of labels, got "
                             f"{type(got).__name__}")
    return [int(x) for x in got]


def check_sft_labels(fn: Callable[[list[int], list[bool]], list[int]]) -> bool:
    """`fn(ids, is_answer)` returns the labels for inputs ids[:-1]: label t is the next token
    ids[t + 1] where that token is an answer token, else -100."""
    exercise = "SFT labels"
    gen = torch.Generator().manual_seed(0)
    for n_turns in (1, 2, 3):
        ids, flags = _random_dialog_tokens(gen, n_turns)
        got = _as_list(call_learner(fn, list(ids), list(flags), exercise=exercise), exercise)
        _, expected = shift_labels(ids, flags)
        if got == expected:
            continue
        if len(got) != len(expected):
            raise ExerciseFailed(f"{exercise}: expected {len(expected)} labels (one per input "
                                 f"token, the inputs being ids[:-1]), got {len(got)}")
        hints = {
            "label t is the NEXT token ids[t + 1]; the labels are the ids shifted left by one":
                [t if f else IGNORE_INDEX for t, f in zip(ids[:-1], flags[:-1])],
            "mask by the flag of the token being predicted (is_answer[t + 1]), not of the input "
            "token": [t if f else IGNORE_INDEX for t, f in zip(ids[1:], flags[:-1])],
            "the loss is on the answers: keep the label where is_answer is True, -100 elsewhere":
                [IGNORE_INDEX if f else t for t, f in zip(ids[1:], flags[1:])],
            "masked labels must be -100 (what cross_entropy ignores), not 0":
                [t if f else 0 for t, f in zip(ids[1:], flags[1:])],
            "only prompt tokens are masked: the answers' EOS is a label too (the model must "
            "learn to stop)": [t if f and t != 2 else IGNORE_INDEX
                               for t, f in zip(ids[1:], flags[1:])],
        }
        for hint, wrong in hints.items():
            if got == wrong:
                raise ExerciseFailed(f"{exercise}: {hint}")
        raise ExerciseFailed(f"{exercise}: labels differ from the reference for ids {ids} and "
                             f"flags {flags}: expected {expected}, got {got}")
    return passed(exercise)


def check_pack(fn: Callable[[list[tuple[list[int], list[bool]]], int],
                            tuple[torch.Tensor, torch.Tensor]]) -> bool:
    """`fn(sequences, seq_len)` concatenates (ids, is_answer) pairs into one stream and returns
    (inputs, labels), each (rows, seq_len): row i is stream[i*L : i*L + L], its labels the
    answer-masked next tokens, the last row padded with input 0 and label -100."""
    exercise = "packing"
    gen = torch.Generator().manual_seed(1)
    for n_dialogs, seq_len in ((3, 8), (5, 16), (1, 64)):
        seqs = [_random_dialog_tokens(gen, 1 + i % 2) for i in range(n_dialogs)]
        got = call_learner(fn, [(list(a), list(b)) for a, b in seqs], seq_len,
                           exercise=exercise)
        if not (isinstance(got, tuple) and len(got) == 2):
            raise ExerciseFailed(f"{exercise}: return a tuple (inputs, labels)")
        exp_in, exp_lab = pack(seqs, seq_len)
        stream = [t for ids, _ in seqs for t in ids]
        if isinstance(got[0], torch.Tensor) and got[0].shape != exp_in.shape:
            n = len(stream)
            if got[0].shape[0] == -(-n // seq_len) and exp_in.shape[0] != got[0].shape[0]:
                raise ExerciseFailed(f"{exercise}: a stream of n tokens has n - 1 (input, "
                                     "next token) pairs: the rows are ceil((n - 1) / seq_len)")
        compare(got[0], exp_in, exercise=exercise + " (inputs)")

        def diagnose(lab: torch.Tensor, exp_in=exp_in, stream=stream) -> str | None:
            unmasked = torch.full_like(exp_in, IGNORE_INDEX).flatten()
            unmasked[:len(stream) - 1] = torch.tensor(stream[1:])
            if torch.equal(lab.flatten(), unmasked):
                return "mask the labels to answer tokens: -100 where is_answer is False"
            return "the labels of row i are stream[i*L + 1 : i*L + L + 1], the next tokens " \
                   "(a row's last label is the first token of the next row)"
        compare(got[1], exp_lab, exercise=exercise + " (labels)", diagnose=diagnose)
    return passed(exercise)


def check_last_token_reward(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """`fn(scores, lengths)` picks scores[b, lengths[b] - 1] for each row of right-padded
    per-position scores (B, T): the reward at the last real token."""
    exercise = "reward at the last real token"
    gen = torch.Generator().manual_seed(2)
    scores = torch.randn(5, 9, generator=gen)
    lengths = torch.tensor([9, 3, 1, 6, 8])
    got = call_learner(fn, scores.clone(), lengths.clone(), exercise=exercise)
    hints = {
        "rows are right-padded: the last column is padding for shorter rows; use lengths":
            scores[:, -1],
        "positions count from 0: the last real token of a row of length n is at n - 1":
            scores[torch.arange(5), lengths.clamp(max=8)],
        "take one score per row: index with (torch.arange(B), lengths - 1), not a slice":
            None,
    }

    def diagnose(g: torch.Tensor) -> str | None:
        for hint, wrong in hints.items():
            if wrong is not None and g.shape == wrong.shape and torch.allclose(g, wrong):
                return hint
        return None
    if isinstance(got, torch.Tensor) and got.shape != (5,):
        raise ExerciseFailed(f"{exercise}: expected one reward per row, shape (5,), got "
                             f"{tuple(got.shape)}. Hint: " + list(hints)[2])
    compare(got, reward_at_last_token(scores, lengths), exercise=exercise, diagnose=diagnose)
    return passed(exercise)


def check_ranking_loss(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
                       ) -> bool:
    """`fn(r_chosen, r_rejected, margin)` is Llama 2's ranking loss, averaged over pairs:
    mean(-log sigmoid(r_chosen - r_rejected - margin))."""
    exercise = "ranking loss with margin"
    gen = torch.Generator().manual_seed(3)
    r_c, r_r = torch.randn(64, generator=gen) * 2, torch.randn(64, generator=gen) * 2
    margin = margins_for(torch.randint(0, len(RATINGS), (64,), generator=gen), "large")
    got = call_learner(fn, r_c.clone(), r_r.clone(), margin.clone(), exercise=exercise)
    wrong = {
        "the margin is subtracted: the chosen reward must beat the rejected one BY m, "
        "sigmoid(r_c - r_r - m)": -torch.nn.functional.logsigmoid(r_c - r_r + margin).mean(),
        "chosen minus rejected, not rejected minus chosen":
            -torch.nn.functional.logsigmoid(r_r - r_c - margin).mean(),
        "take the log of the sigmoid (a log-likelihood), then negate it":
            -torch.sigmoid(r_c - r_r - margin).mean(),
        "average over the pairs (mean), not sum":
            -torch.nn.functional.logsigmoid(r_c - r_r - margin).sum(),
        "the loss is -log sigmoid(...): don't forget the minus sign":
            torch.nn.functional.logsigmoid(r_c - r_r - margin).mean(),
    }

    def diagnose(g: torch.Tensor) -> str | None:
        for hint, w in wrong.items():
            if g.shape == w.shape and torch.allclose(g, w, atol=1e-5):
                return hint
        return None
    compare(got, ranking_loss(r_c, r_r, margin), exercise=exercise, diagnose=diagnose)
    # Large differences must not overflow: use a stable log-sigmoid.
    big = call_learner(fn, torch.tensor([-60.0, 60.0]), torch.tensor([60.0, -60.0]),
                       torch.zeros(2), exercise=exercise)
    if not torch.isfinite(big).all():
        raise ExerciseFailed(f"{exercise}: the loss is not finite for reward differences of "
                             "120. Hint: torch.log(torch.sigmoid(x)) underflows to log(0); "
                             "use F.logsigmoid(x)")
    return passed(exercise)
