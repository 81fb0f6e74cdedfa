"""Checks for chapter 07 (pretraining).

    check_lr_schedule(fn)   fn(step, max_steps, warmup_steps, peak_lr) -> learning rate: linear
                            warmup, then cosine down to 10% of the peak (Llama 2's schedule)
    check_pack_documents(fn)  fn(token_docs, seq_len) -> (inputs, targets): documents packed into
                            rows that overlap by one token, the last row padded (targets -100)
    check_decay_groups(fn)  fn(model) -> (decay, no_decay): parameter lists for AdamW
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..config import ModelArgs
from ..data.batching import IGNORE_INDEX, pack
from ..model import Transformer
from ..train import TrainConfig, lr_at, param_groups
from ._harness import ExerciseFailed, call_learner, compare, passed

__all__ = ["check_lr_schedule", "check_pack_documents", "check_decay_groups"]


def _lr_variants(step: int, max_steps: int, warmup: int, peak: float):
    floor = 0.1 * peak
    if step < warmup:
        yield peak * step / warmup, ("the warmup starts at 0: step 0 would not move the "
                                     "weights; use (step + 1) / warmup_steps")
    else:
        progress = (step - warmup) / (max_steps - warmup)
        yield (peak * 0.5 * (1 + math.cos(math.pi * progress)),
               "the cosine decays to 0; Llama 2 decays to 10% of the peak")
        yield (floor + (peak - floor) * (1 - progress),
               "linear decay; the decay follows half a cosine: 0.5 * (1 + cos(pi * progress))")
        full = step / max_steps
        yield (floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * full)),
               "progress is measured from step 0; the cosine starts after the warmup: "
               "(step - warmup_steps) / (max_steps - warmup_steps)")


def check_lr_schedule(fn: Callable) -> bool:
    """`fn(step, max_steps, warmup_steps, peak_lr)` must return the learning rate of
    `llama2_edu.train.lr_at`: peak * (step + 1) / warmup_steps during the warmup, then a half
    cosine from the peak down to 0.1 * peak at step max_steps."""
    exercise = "check_lr_schedule"
    for max_steps, warmup, peak in [(100, 10, 1e-3), (37, 5, 3.0)]:
        config = TrainConfig(max_steps=max_steps, warmup_steps=warmup, lr=peak)
        for step in sorted({0, 1, warmup - 1, warmup, warmup + 3, max_steps // 2,
                            max_steps - 1, max_steps}):
            got = call_learner(fn, step, max_steps, warmup, peak, exercise=exercise)
            try:
                got = float(got)
            except (TypeError, ValueError):
                raise ExerciseFailed(f"{exercise}: expected a number, got "
                                     f"{type(got).__name__}") from None
            expected = lr_at(step, config)
            if math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-12):
                continue
            hint = next((h for v, h in _lr_variants(step, max_steps, warmup, peak)
                         if math.isclose(got, v, rel_tol=1e-6, abs_tol=1e-12)), None)
            message = (f"{exercise}: at step {step} (max_steps {max_steps}, warmup "
                       f"{warmup}, peak {peak}) expected {expected:.6g}, got {got:.6g}")
            raise ExerciseFailed(message + (f". Hint: {hint}" if hint else ""))
    return passed(exercise, "warmup, then cosine to 10% of the peak")


def check_pack_documents(fn: Callable) -> bool:
    """`fn(token_docs, seq_len)` (token_docs: lists of ids, each BOS ... EOS) must return
    (inputs, targets), int64 tensors (rows, seq_len): the documents concatenated into one
    stream, inputs = stream[i*T : i*T+T], targets = stream[i*T+1 : i*T+T+1], the last row padded
    with 0 in the inputs and -100 in the targets (as `llama2_edu.data.pack`)."""
    exercise = "check_pack_documents"
    gen = torch.Generator().manual_seed(7)
    for n_docs, seq_len in [(3, 4), (5, 6), (2, 5)]:
        docs = [[1] + torch.randint(3, 50, (int(torch.randint(1, 9, (1,), generator=gen)),),
                                    generator=gen).tolist() + [2] for _ in range(n_docs)]
        got = call_learner(fn, [list(d) for d in docs], seq_len, exercise=exercise)
        if not (isinstance(got, tuple) and len(got) == 2):
            raise ExerciseFailed(f"{exercise}: return a tuple (inputs, targets)")
        inputs, targets = got
        exp_inputs, exp_targets = pack(docs, seq_len)
        n_stream = sum(len(d) for d in docs)
        if isinstance(inputs, torch.Tensor) and isinstance(targets, torch.Tensor):
            if inputs.shape == targets.shape and torch.equal(inputs, targets):
                raise ExerciseFailed(f"{exercise}: targets equal inputs. Hint: targets are the "
                                     "inputs shifted left by one (the next token)")
            if targets.dim() == 2 and targets.shape != exp_targets.shape:
                if targets.shape[0] == n_stream // (seq_len + 1):
                    hint = ("rows of seq_len + 1 tokens that do not overlap lose a target per "
                            "row: row i starts at i * seq_len, so neighbours share one token")
                elif targets.shape[0] == (n_stream - 1) // seq_len:
                    hint = "the last, partial row is dropped; pad it so no token is lost"
                else:
                    hint = f"expected {exp_targets.shape[0]} rows of {seq_len}"
                raise ExerciseFailed(f"{exercise}: expected shape {tuple(exp_targets.shape)}, "
                                     f"got {tuple(targets.shape)}. Hint: {hint}")
            pad = exp_targets == IGNORE_INDEX
            if (targets.shape == exp_targets.shape and pad.any()
                    and not (targets[pad] == IGNORE_INDEX).any()):
                raise ExerciseFailed(f"{exercise}: padded targets must be -100 (ignored by the "
                                     "loss), not a token id")
        compare(inputs, exp_inputs, exercise=exercise + " (inputs)", atol=0, rtol=0)
        compare(targets, exp_targets, exercise=exercise + " (targets)", atol=0, rtol=0)
    return passed(exercise, "every token but the first is a target exactly once")


def check_decay_groups(fn: Callable) -> bool:
    """`fn(model)` must return (decay, no_decay), two lists of the model's parameters: weight
    decay on every matrix (linear and embedding weights), none on the RMSNorm gains (1-D)."""
    exercise = "check_decay_groups"
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50,
                                  multiple_of=16, max_seq_len=16))
    got = call_learner(fn, model, exercise=exercise)
    if not (isinstance(got, tuple) and len(got) == 2):
        raise ExerciseFailed(f"{exercise}: return a tuple (decay, no_decay) of parameter lists")
    names = {id(p): n for n, p in model.named_parameters()}
    decay_ref, no_decay_ref = param_groups(model, 0.1)
    want_decay = {names[id(p)] for p in decay_ref["params"]}
    want_plain = {names[id(p)] for p in no_decay_ref["params"]}
    try:
        got_decay = {names[id(p)] for p in got[0]}
        got_plain = {names[id(p)] for p in got[1]}
    except KeyError:
        raise ExerciseFailed(f"{exercise}: the lists must hold the model's own parameters "
                             "(from model.parameters()), not copies") from None
    if got_decay & got_plain:
        raise ExerciseFailed(f"{exercise}: {sorted(got_decay & got_plain)[0]} is in both lists")
    missing = (want_decay | want_plain) - got_decay - got_plain
    if missing:
        raise ExerciseFailed(f"{exercise}: {len(missing)} parameters are in neither list, e.g. "
                             f"{sorted(missing)[0]}")
    if got_decay & want_plain:
        raise ExerciseFailed(f"{exercise}: {sorted(got_decay & want_plain)[0]} is decayed. Hint: "
                             "RMSNorm gains (1-D) are not decayed; pulling them to 0 would shrink "
                             "every activation rather than regularise")
    if got_plain & want_decay:
        example = sorted(got_plain & want_decay)[0]
        hint = ("embeddings are matrices too and are decayed here (every 2-D weight)"
                if "embeddings" in example or "output" in example
                else "every weight matrix (p.dim() >= 2) is decayed")
        raise ExerciseFailed(f"{exercise}: {example} is not decayed. Hint: {hint}")
    return passed(exercise, f"{len(want_decay)} matrices decayed, {len(want_plain)} gains not")
