"""Chapter 00: count Llama 2's parameters by formula."""

from __future__ import annotations

from collections.abc import Callable

from ..config import PRESETS, ModelArgs, count_parameters
from ._harness import ExerciseFailed, call_learner, passed

# Small and real shapes, MHA and GQA, so that each typical slip shows on at least one of them.
_PRESETS = ("toy", "tiny-mha", "tiny-mqa", "stories15m", "llama2-7b", "llama2-13b",
            "llama2-34b", "llama2-70b")


def _count(args: ModelArgs, *, output: bool = True, layer_norms: bool = True,
           final_norm: bool = True, gqa: bool = True, swiglu: bool = True) -> int:
    """count_parameters with single pieces switched off: the known wrong answers."""
    kv_dim = (args.kv_heads if gqa else args.n_heads) * args.head_dim
    attention = 2 * args.dim * args.dim + 2 * args.dim * kv_dim
    ffn = 3 * args.dim * args.hidden_dim if swiglu else 2 * args.dim * 4 * args.dim
    per_layer = attention + ffn + (2 * args.dim if layer_norms else 0)
    embeddings = (2 if output else 1) * args.vocab_size * args.dim
    return args.n_layers * per_layer + embeddings + (args.dim if final_norm else 0)


_MISTAKES = {
    "output": "the output projection (vocab x dim) is a separate matrix in Llama 2, not tied to "
              "the embeddings: count it too",
    "layer_norms": "each block has two RMSNorm weight vectors (attention_norm, ffn_norm) of "
                   "size dim",
    "final_norm": "there is one more RMSNorm (`norm`, size dim) after the last block",
    "gqa": "with grouped-query attention wk and wv have n_kv_heads * head_dim rows, not dim: "
           "use args.kv_heads",
    "swiglu": "the feed-forward is SwiGLU: three matrices (w1, w2, w3) of dim x hidden_dim with "
              "hidden_dim = args.hidden_dim, not two matrices of dim x 4*dim",
}


def check_param_count(fn: Callable[[ModelArgs], int]) -> bool:
    """`fn(args)` must return the exact parameter count of `Transformer(args)` for every preset."""
    exercise = "parameter count"
    for name in _PRESETS:
        args = PRESETS[name]
        got = call_learner(fn, args, exercise=exercise)
        try:
            as_int = int(got)
        except (TypeError, ValueError):
            raise ExerciseFailed(f"{exercise}: expected an int, got {type(got).__name__}") from None
        if as_int != got:
            raise ExerciseFailed(f"{exercise}: expected a whole number, got {got!r}")
        expected = count_parameters(args)
        if as_int == expected:
            continue
        message = f"{exercise}: for preset {name!r} you count {as_int:,}, the model has {expected:,}"
        hints = [hint for piece, hint in _MISTAKES.items() if _count(args, **{piece: False}) == as_int]
        raise ExerciseFailed(message + (f". Hint: {hints[0]}" if hints else ""))
    return passed(exercise, f"{len(_PRESETS)} presets, toy to llama2-70b")


def check_weight_gib(fn: Callable[[ModelArgs, int], float]) -> bool:
    """`fn(args, bytes_per_parameter)` returns the memory of the weights in GiB (2**30 bytes)."""
    exercise = "weight memory"
    for name in ("llama2-7b", "llama2-13b", "llama2-70b", "toy"):
        args = PRESETS[name]
        for nbytes in (4, 2):
            got = call_learner(fn, args, nbytes, exercise=exercise)
            expected = count_parameters(args) * nbytes / 2**30
            try:
                got = float(got)
            except (TypeError, ValueError):
                raise ExerciseFailed(f"{exercise}: expected a number, got "
                                     f"{type(got).__name__}") from None
            if abs(got - expected) <= 1e-6 * expected:
                continue
            message = (f"{exercise}: {name} at {nbytes} bytes per parameter: you say "
                       f"{got:.4g} GiB, it is {expected:.4g} GiB")
            if abs(got - expected * 2**30 / 1e9) <= 1e-6 * expected * 2:
                message += ". Hint: that is GB (10^9 bytes); a GiB is 2^30 = 1,073,741,824 bytes"
            elif abs(got - expected * 2**30) <= 1e-6 * expected * 2**30:
                message += ". Hint: that is bytes; divide by 2**30 for GiB"
            elif abs(got - count_parameters(args) / 2**30) <= 1e-6 * expected:
                message += ". Hint: multiply the parameter count by the bytes per parameter"
            raise ExerciseFailed(message)
    return passed(exercise, "fp32 and bf16, toy to llama2-70b")
