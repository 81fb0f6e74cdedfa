"""Chapter 01: RMSNorm, y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..model import RMSNorm
from ._harness import ExerciseFailed, call_learner, compare, passed

EXERCISE = "RMSNorm"


def reference_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    norm = RMSNorm(x.shape[-1], eps=eps).to(weight.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        return norm(x)


def _wrong_variants(x: torch.Tensor, weight: torch.Tensor, eps: float) -> dict[str, torch.Tensor]:
    """The usual slips, computed in fp32: the first one the learner's output equals names it."""
    x = x.float()
    w = weight.float()
    ms = x.pow(2).mean(-1, keepdim=True)
    return {
        "eps belongs inside the square root, added to the mean square: "
        "x / sqrt(mean(x^2) + eps), not x / (sqrt(mean(x^2)) + eps)":
            x / (ms.sqrt() + eps) * w,
        "the mean of the squares is taken over the last dimension (the features of one token), "
        "with keepdim=True":
            x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + eps) * w,
        "the mean is over the features of each token only (dim=-1), not over the whole tensor":
            x * torch.rsqrt(x.pow(2).mean() + eps) * w,
        "the mean runs over the last dimension only, not over the sequence":
            x * torch.rsqrt(x.pow(2).mean(-2, keepdim=True) + eps) * w,
        "multiply by the learned weight (gain) at the end": x * torch.rsqrt(ms + eps),
        "RMSNorm does not subtract the mean (that is LayerNorm)":
            (x - x.mean(-1, keepdim=True)) * torch.rsqrt(x.var(-1, unbiased=False, keepdim=True)
                                                         + eps) * w,
        "divide by the square root of the mean square (the root mean square), not by the mean "
        "square itself": x / (ms + eps) * w,
        "use the mean of the squares, not their sum": x * torch.rsqrt(x.pow(2).sum(-1, True) + eps) * w,
    }


def _diagnose(x, weight, eps):
    def diagnose(got: torch.Tensor) -> str | None:
        for hint, wrong in _wrong_variants(x, weight, eps).items():
            if wrong.shape == got.shape and torch.allclose(got.float(), wrong, rtol=1e-3,
                                                           atol=1e-5):
                return hint
        return None
    return diagnose


def _bf16_ulps(got: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float) -> float:
    """Largest error of `got`, in units in the last place of bf16, against fp64 arithmetic."""
    x64 = x.double()
    true = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * weight.double()
    ulp = torch.exp2(true.abs().clamp_min(1e-30).log2().floor() - 7)
    return ((got.double() - true).abs() / ulp).max().item()


def check_rmsnorm(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> bool:
    """`fn(x, weight, eps)` normalises the last dimension of x (any leading shape), scales by
    `weight` and returns x's dtype, computing in fp32 inside (as Meta's reference does)."""
    gen = torch.Generator().manual_seed(0)
    cases = [  # (shape, scale, offset, eps): eps matters only where the mean square is small
        ((2, 5, 64), 2.0, 0.5, 1e-5),
        ((3, 7, 32), 1e-3, 0.0, 1e-5),
        ((4, 16), 0.3, 0.1, 0.1),
    ]
    for shape, scale, offset, eps in cases:
        x = torch.randn(shape, generator=gen) * scale + offset
        weight = torch.rand(shape[-1], generator=gen) + 0.5
        got = call_learner(fn, x.clone(), weight.clone(), eps, exercise=EXERCISE)
        compare(got, reference_rmsnorm(x, weight, eps), exercise=EXERCISE, rtol=1e-4, atol=1e-6,
                diagnose=_diagnose(x, weight, eps))

    # bf16 activations, as in a real model: squaring and rsqrt in bf16 add several roundings,
    # which show as errors beyond ~1.5 ulp somewhere among 65k numbers.
    x = (torch.randn(8, 16, 512, generator=gen) * 3 + 1).bfloat16()
    weight = (torch.rand(512, generator=gen) + 0.5).bfloat16()
    got = call_learner(fn, x.clone(), weight.clone(), 1e-5, exercise=EXERCISE)
    if isinstance(got, torch.Tensor) and got.dtype != x.dtype:
        raise ExerciseFailed(f"{EXERCISE} (bf16 input): returned {got.dtype}; the output keeps "
                             "the input's dtype. Hint: compute in fp32, then .type_as(x)")
    # Loose tolerance first (gross mistakes, with their hints), then the rounding budget.
    compare(got, reference_rmsnorm(x, weight, 1e-5), exercise=EXERCISE + " (bf16 input)",
            rtol=0.02, atol=1e-3, diagnose=_diagnose(x, weight, 1e-5))
    worst = _bf16_ulps(got, x, weight, 1e-5)
    if worst > 1.75:
        raise ExerciseFailed(
            f"{EXERCISE} (bf16 input): errors up to {worst:.1f} ulp of bf16, more than rounding "
            "the fp32 result gives (<= 1.5). Hint: compute in fp32 inside (x.float()), convert "
            "back with .type_as(x) at the end")
    return passed(EXERCISE, "fp32 and bf16 inputs, eps placement, any leading shape")


def check_layernorm(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float],
                                 torch.Tensor]) -> bool:
    """`fn(x, weight, bias, eps)` is LayerNorm over the last dimension, as
    `torch.nn.functional.layer_norm` computes it."""
    exercise = "LayerNorm"
    gen = torch.Generator().manual_seed(1)
    for shape, scale, offset, eps in [((2, 5, 32), 2.0, 1.5, 1e-5), ((3, 6), 0.05, 0.0, 1e-2)]:
        x = torch.randn(shape, generator=gen) * scale + offset
        weight = torch.rand(shape[-1], generator=gen) + 0.5
        bias = torch.randn(shape[-1], generator=gen)
        mu = x.mean(-1, keepdim=True)
        var = x.var(-1, unbiased=False, keepdim=True)
        wrong = {
            "LayerNorm divides by the *biased* variance (mean of squared deviations, divided by "
            "d, not d - 1): unbiased=False": (x - mu) / torch.sqrt(x.var(-1, keepdim=True) + eps)
            * weight + bias,
            "eps belongs inside the square root: (x - mean) / sqrt(var + eps)":
                (x - mu) / (var.sqrt() + eps) * weight + bias,
            "subtract the mean first: without it this is RMSNorm (plus a bias)":
                x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight + bias,
            "the statistics are over the last dimension (each token's features), keepdim=True":
                (x - x.mean(0, keepdim=True)) / torch.sqrt(x.var(0, unbiased=False, keepdim=True)
                                                           + eps) * weight + bias,
            "add the bias after multiplying by the weight": (x - mu) / torch.sqrt(var + eps) * weight,
            "multiply by the weight": (x - mu) / torch.sqrt(var + eps) + bias,
        }

        def diagnose(got, wrong=wrong):
            return next((hint for hint, w in wrong.items()
                         if torch.allclose(got, w, rtol=1e-4, atol=1e-5)), None)

        got = call_learner(fn, x.clone(), weight.clone(), bias.clone(), eps, exercise=exercise)
        expected = torch.nn.functional.layer_norm(x, (shape[-1],), weight, bias, eps)
        compare(got, expected, exercise=exercise, rtol=1e-4, atol=1e-5, diagnose=diagnose)
    return passed(exercise, "matches torch.nn.functional.layer_norm")
