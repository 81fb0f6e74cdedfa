"""Checks for chapter 03 (attention: MHA -> MQA -> GQA).

    check_causal_attention(fn)  fn(q, k, v) -> causal softmax(q k^T / sqrt(d)) v, any heads
    check_repeat_kv(fn)         fn(x, n_rep) -> Meta's repeat_kv: n_kv heads become n_kv * n_rep
    check_gqa_attention(fn)     fn(q, k, v) with fewer K/V heads than query heads, causal

Each check compares with the reference on random inputs; when the values differ it computes the
usual wrong variants (mask off by one, no 1/sqrt(d), softmax over the wrong axis, heads grouped by
tiling instead of contiguously, ...) and names the one that matches.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._harness import ExerciseFailed, call_learner, compare, passed

__all__ = ["check_causal_attention", "check_repeat_kv", "check_gqa_attention"]


def _attention_variant(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, offset: int = 0,
                       scale: float | None = None, softmax_dim: int = -1,
                       causal: bool = True, mask_after_softmax: bool = False) -> torch.Tensor:
    """Attention written out, with knobs for the usual mistakes. Query i may see key j when
    j <= i + offset (offset 0 is correct; -1 masks the diagonal; +1 peeks one token ahead)."""
    d = q.shape[-1]
    scale = 1 / math.sqrt(d) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    t_q, t_k = scores.shape[-2:]
    allowed = torch.arange(t_k)[None, :] <= torch.arange(t_q)[:, None] + offset
    if mask_after_softmax:
        return (scores.softmax(dim=softmax_dim) * allowed) @ v
    if causal:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(dim=softmax_dim) @ v


def _reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


_ATTENTION_MISTAKES = [
    (dict(offset=-1),
     "the diagonal is masked: a token must be allowed to attend to itself (mask j > i, "
     "not j >= i; with torch.triu use diagonal=1)"),
    (dict(offset=1),
     "the mask is off by one: each token also sees the next one (mask every key j > i; "
     "with torch.triu use diagonal=1, not 2)"),
    (dict(causal=False), "no causal mask: every token sees the future (mask keys j > i with -inf "
                         "before the softmax)"),
    (dict(scale=1.0), "missing the 1/sqrt(head_dim) scaling of the scores"),
    (dict(softmax_dim=-2), "softmax over the wrong axis: normalise over the keys (dim=-1), so "
                           "that each query's weights sum to 1"),
    (dict(mask_after_softmax=True),
     "the mask is applied after the softmax: masked weights must be -inf *before* the softmax, "
     "otherwise the remaining weights no longer sum to 1"),
]


def _diagnose_attention(q, k, v, got: torch.Tensor) -> str | None:
    if torch.isnan(got).any():
        return ("NaNs in the output: some row has every key masked, usually because the "
                "diagonal is masked (a token must see itself) or the mask fill runs over a row")
    for knobs, hint in _ATTENTION_MISTAKES:
        if torch.allclose(got, _attention_variant(q, k, v, **knobs), atol=1e-5, rtol=1e-4):
            return hint
    # 1/d instead of 1/sqrt(d) is common too.
    if torch.allclose(got, _attention_variant(q, k, v, scale=1 / q.shape[-1]), atol=1e-5):
        return "scores scaled by 1/head_dim; the scaling is 1/sqrt(head_dim)"
    return None


def check_causal_attention(fn: Callable) -> bool:
    """`fn(q, k, v)`, each (batch, heads, seq, head_dim), must return causal scaled dot-product
    attention (batch, heads, seq, head_dim), as `F.scaled_dot_product_attention(...,
    is_causal=True)`."""
    exercise = "check_causal_attention"
    gen = torch.Generator().manual_seed(0)
    for shape in [(1, 1, 5, 8), (2, 3, 7, 16), (1, 2, 1, 4)]:
        q, k, v = (torch.randn(*shape, generator=gen) for _ in range(3))
        got = call_learner(fn, q.clone(), k.clone(), v.clone(), exercise=exercise)
        compare(got, _reference_attention(q, k, v), exercise=exercise, atol=1e-5, rtol=1e-4,
                diagnose=lambda g, q=q, k=k, v=v: _diagnose_attention(q, k, v, g))
    return passed(exercise, "matches F.scaled_dot_product_attention with is_causal=True")


def _reference_repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Meta's repeat_kv: each K/V head is copied n_rep times *next to itself*, so that query
    heads [g*n_rep, (g+1)*n_rep) share K/V head g."""
    b, t, n_kv, d = x.shape
    if n_rep == 1:
        return x
    return x[:, :, :, None, :].expand(b, t, n_kv, n_rep, d).reshape(b, t, n_kv * n_rep, d)


def check_repeat_kv(fn: Callable) -> bool:
    """`fn(x, n_rep)` with x (batch, seq, n_kv_heads, head_dim) must return
    (batch, seq, n_kv_heads * n_rep, head_dim) with heads grouped as in Meta's `repeat_kv`."""
    exercise = "check_repeat_kv"
    gen = torch.Generator().manual_seed(1)
    cases = [((2, 5, 2, 4), 3), ((1, 3, 4, 8), 2), ((1, 4, 1, 4), 4), ((2, 3, 2, 4), 1)]
    for shape, n_rep in cases:
        x = torch.randn(*shape, generator=gen)
        got = call_learner(fn, x.clone(), n_rep, exercise=exercise)
        expected = _reference_repeat_kv(x, n_rep)
        if isinstance(got, torch.Tensor) and got.shape != expected.shape:
            b, t, n_kv, d = shape
            if got.shape == (b, t * n_rep, n_kv, d):
                raise ExerciseFailed(f"{exercise}: repeated along the sequence axis (dim 1); "
                                     f"the heads are dim 2 of (batch, seq, n_kv_heads, head_dim)")
            raise ExerciseFailed(f"{exercise}: expected shape {tuple(expected.shape)} for x of "
                                 f"shape {shape} and n_rep={n_rep}, got {tuple(got.shape)}")

        def diagnose(g, x=x, n_rep=n_rep):
            if torch.equal(g, x.repeat(1, 1, n_rep, 1)):
                return ("heads are tiled (h0, h1, h0, h1, ...) as torch.repeat / "
                        "einops.repeat('... h d -> ... (r h) d') do; Meta groups them "
                        "contiguously (h0, h0, h1, h1, ...): use repeat_interleave on dim 2, "
                        "or '... h d -> ... (h r) d'")
            return None

        compare(got, expected, exercise=exercise, atol=0, rtol=0, diagnose=diagnose)
    return passed(exercise, "heads grouped contiguously, as Meta's repeat_kv")


def check_gqa_attention(fn: Callable) -> bool:
    """`fn(q, k, v)` with q (batch, n_heads, seq, head_dim) and k, v (batch, n_kv_heads, seq,
    head_dim) must return causal attention where query head h uses K/V head h // (n_heads /
    n_kv_heads), as in Llama 2 (and `F.scaled_dot_product_attention(..., enable_gqa=True)`)."""
    exercise = "check_gqa_attention"
    gen = torch.Generator().manual_seed(2)
    for b, n_heads, n_kv, t, d in [(2, 4, 2, 6, 8), (1, 6, 3, 5, 4), (1, 4, 1, 5, 8),
                                   (1, 2, 2, 4, 4)]:
        q = torch.randn(b, n_heads, t, d, generator=gen)
        k, v = (torch.randn(b, n_kv, t, d, generator=gen) for _ in range(2))
        got = call_learner(fn, q.clone(), k.clone(), v.clone(), exercise=exercise)
        rep = n_heads // n_kv
        k_grouped, v_grouped = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        expected = _reference_attention(q, k_grouped, v_grouped)

        def diagnose(g, q=q, k=k, v=v, rep=rep, kg=k_grouped, vg=v_grouped):
            tiled = _reference_attention(q, k.repeat(1, rep, 1, 1), v.repeat(1, rep, 1, 1))
            if torch.allclose(g, tiled, atol=1e-5, rtol=1e-4):
                return ("query heads are matched to K/V heads by tiling (h % n_kv_heads); "
                        "Llama 2 groups them contiguously: query head h uses K/V head "
                        "h // (n_heads // n_kv_heads), i.e. repeat_interleave on the head axis")
            return _diagnose_attention(q, kg, vg, g)

        compare(got, expected, exercise=exercise, atol=1e-5, rtol=1e-4, diagnose=diagnose)
    return passed(exercise, "GQA with contiguous head groups, MHA and MQA as special cases")
