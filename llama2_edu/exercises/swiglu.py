"""Checks for chapter 04 (SwiGLU).

    check_swiglu(fn)       fn(x, w1, w2, w3) -> w2(silu(w1 x) * w3 x), weights as in nn.Linear
    check_hidden_dim(fn)   fn(dim, multiple_of, ffn_dim_multiplier) -> Meta's SwiGLU hidden size
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..config import ModelArgs
from ._harness import ExerciseFailed, call_learner, compare, passed

__all__ = ["check_swiglu", "check_hidden_dim"]


def _swiglu(x, w1, w2, w3, act=F.silu):
    return F.linear(act(F.linear(x, w1)) * F.linear(x, w3), w2)


def check_swiglu(fn: Callable) -> bool:
    """`fn(x, w1, w2, w3)` with x (..., dim), w1 and w3 (hidden, dim), w2 (dim, hidden) (the
    `weight` of each nn.Linear, so `x @ w1.T` is w1 applied to x) must return Llama's feed-forward
    output w2(silu(w1 x) * w3 x), shape (..., dim)."""
    exercise = "check_swiglu"
    gen = torch.Generator().manual_seed(3)
    for batch_shape, dim, hidden in [((2, 5), 8, 24), ((3,), 16, 40)]:
        x = torch.randn(*batch_shape, dim, generator=gen)
        w1, w3 = (torch.randn(hidden, dim, generator=gen) / dim**0.5 for _ in range(2))
        w2 = torch.randn(dim, hidden, generator=gen) / hidden**0.5
        got = call_learner(fn, x.clone(), w1.clone(), w2.clone(), w3.clone(), exercise=exercise)
        if isinstance(got, torch.Tensor) and got.shape == (*batch_shape, hidden):
            raise ExerciseFailed(f"{exercise}: the output has the hidden size {hidden}, not dim "
                                 f"{dim}: w2 (the down projection) is missing")

        def diagnose(g, x=x, w1=w1, w2=w2, w3=w3):
            variants = [
                (_swiglu(x, w3, w2, w1), "silu is applied to the wrong branch: w1 and w3 are "
                                         "swapped (Meta: w2(silu(w1 x) * w3 x))"),
                (_swiglu(x, w1, w2, w3, act=torch.sigmoid),
                 "sigmoid instead of silu: the gate is silu(z) = z * sigmoid(z) (that is "
                 "SwiGLU; sigmoid alone is the original GLU)"),
                (_swiglu(x, w1, w2, w3, act=F.gelu), "GELU instead of SiLU (that is GEGLU)"),
                (_swiglu(x, w1, w2, w3, act=F.relu), "ReLU instead of SiLU (that is ReGLU)"),
                (F.linear(F.silu(F.linear(x, w1)), w2),
                 "the gate is missing: multiply silu(w1 x) elementwise by w3 x"),
                (F.linear(F.silu(F.linear(x, w1) * F.linear(x, w3)), w2),
                 "silu is applied after the product; it belongs on w1 x alone"),
            ]
            for value, hint in variants:
                if torch.allclose(g, value, atol=1e-5, rtol=1e-4):
                    return hint
            return None

        compare(got, _swiglu(x, w1, w2, w3), exercise=exercise, atol=1e-5, rtol=1e-4,
                diagnose=diagnose)
    return passed(exercise, "w2(silu(w1 x) * w3 x)")


def _reference_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    return ModelArgs(dim=dim, n_layers=1, n_heads=1, multiple_of=multiple_of,
                     ffn_dim_multiplier=ffn_dim_multiplier).hidden_dim


def _hidden_variants(dim: int, multiple_of: int, mult: float | None):
    base = int(2 * 4 * dim / 3)
    scaled = int(mult * base) if mult is not None else base
    yield (multiple_of * (scaled // multiple_of),
           "rounded down; Meta rounds *up* to the next multiple of multiple_of: "
           "multiple_of * ((hidden + multiple_of - 1) // multiple_of)")
    if mult is not None:
        rounded_first = multiple_of * ((base + multiple_of - 1) // multiple_of)
        yield (int(mult * rounded_first),
               "ffn_dim_multiplier is applied after rounding; apply it to int(2 * 4 * dim / 3) "
               "first, then round up")
        yield (multiple_of * ((base + multiple_of - 1) // multiple_of),
               "ffn_dim_multiplier is ignored (it is 1.3 for 70B, 1.0 for 34B)")
    yield scaled, "not rounded to a multiple of multiple_of"
    yield (multiple_of * ((4 * dim + multiple_of - 1) // multiple_of),
           "the 2/3 factor is missing: SwiGLU has three matrices, so the hidden size is "
           "2/3 of 4 * dim to keep the parameter count of a 4 * dim two-matrix FFN")


def check_hidden_dim(fn: Callable) -> bool:
    """`fn(dim, multiple_of, ffn_dim_multiplier)` must return the SwiGLU hidden size by Meta's
    rule (11008 for 7B, 13824 for 13B, 22016 for 34B, 28672 for 70B)."""
    exercise = "check_hidden_dim"
    # (100, 64, 1.5) comes before 70B: there "multiplier ignored" and "rounded down" give the
    # same 24576, here they differ, so the hint names the right mistake.
    cases = [(4096, 256, None), (5120, 256, None), (100, 64, 1.5), (8192, 256, 1.0),
             (8192, 4096, 1.3), (288, 32, None), (768, 32, None), (320, 96, 0.8)]
    for dim, multiple_of, mult in cases:
        got = call_learner(fn, dim, multiple_of, mult, exercise=exercise)
        expected = _reference_hidden_dim(dim, multiple_of, mult)
        if isinstance(got, torch.Tensor):
            got = got.item()
        if not isinstance(got, int) or isinstance(got, bool):
            if isinstance(got, float) and got == expected:
                raise ExerciseFailed(f"{exercise}: returned the float {got}; a layer size must "
                                     f"be an int")
            raise ExerciseFailed(f"{exercise}: expected an int, got {type(got).__name__} "
                                 f"({got!r})")
        if got != expected:
            message = (f"{exercise}: dim={dim}, multiple_of={multiple_of}, "
                       f"ffn_dim_multiplier={mult}: expected {expected}, got {got}")
            for value, hint in _hidden_variants(dim, multiple_of, mult):
                if got == value:
                    message += f". Hint: {hint}"
                    break
            raise ExerciseFailed(message)
    return passed(exercise, "11008 / 13824 / 22016 / 28672 and the small shapes")
