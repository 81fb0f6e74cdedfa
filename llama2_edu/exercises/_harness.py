"""What every exercise check shares: run the learner's function, compare, explain.

A check prints one line starting with a tick when the learner's function is right, and raises
`ExerciseFailed` (an AssertionError) with a specific hint when it is not, so the failure is
visible in the notebook and testable in CI.
"""

from __future__ import annotations

from typing import Callable

import torch


class ExerciseFailed(AssertionError):
    """The learner's implementation disagrees with the reference; the message says how."""


def call_learner(fn: Callable, *args, exercise: str, **kwargs):
    """Call the learner's function, turning "not written yet" into a friendly failure."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as e:
        raise ExerciseFailed(f"{exercise}: not implemented yet ({e})") from None


def compare(got, expected: torch.Tensor, *, exercise: str, atol: float = 1e-5,
            rtol: float = 1e-5, diagnose: Callable[[torch.Tensor], str | None] | None = None):
    """Raise ExerciseFailed unless `got` equals `expected` within tolerance. `diagnose(got)` may
    return a specific hint (a known mistake) when the values differ."""
    if not isinstance(got, torch.Tensor):
        raise ExerciseFailed(f"{exercise}: expected a torch.Tensor, got {type(got).__name__}")
    if got.shape != expected.shape:
        raise ExerciseFailed(f"{exercise}: expected shape {tuple(expected.shape)}, "
                             f"got {tuple(got.shape)}")
    if got.dtype != expected.dtype:
        raise ExerciseFailed(f"{exercise}: expected dtype {expected.dtype}, got {got.dtype}")
    if not torch.allclose(got, expected, atol=atol, rtol=rtol):
        hint = diagnose(got) if diagnose is not None else None
        worst = (got - expected).abs().max().item()
        message = f"{exercise}: values differ from the reference (max abs error {worst:.3g})"
        raise ExerciseFailed(message + (f". Hint: {hint}" if hint else ""))


def passed(exercise: str, detail: str = "") -> bool:
    print(f"✓ {exercise}: correct" + (f" ({detail})" if detail else ""))
    return True
