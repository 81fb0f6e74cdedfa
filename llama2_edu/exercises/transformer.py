"""Checks for chapter 05 (the block and the model).

    check_transformer_block(make)   make(args, layer_id) -> a block module with Meta's names
    check_transformer(make)         make(args) -> a whole model with Meta's names

`make` is a class (an nn.Module subclass) or any function with that signature. The check builds
the learner's module, copies in the weights of the library's reference (norm weights randomised,
so that a misplaced norm cannot hide behind weights of 1) and compares the outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelArgs
from ..model import Transformer, TransformerBlock, precompute_rope
from ._harness import ExerciseFailed, call_learner, compare, passed

__all__ = ["check_transformer_block", "check_transformer"]

_ARGS = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=48, multiple_of=16,
                  max_seq_len=16)


def _randomise(module: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def _build_and_load(make: Callable, reference: nn.Module, exercise: str, *make_args) -> nn.Module:
    module = call_learner(make, *make_args, exercise=exercise)
    if not isinstance(module, nn.Module):
        raise ExerciseFailed(f"{exercise}: {getattr(make, '__name__', make)}{make_args} should "
                             f"return an nn.Module, got {type(module).__name__}")
    mine = {n: tuple(p.shape) for n, p in module.named_parameters()}
    ref = {n: tuple(p.shape) for n, p in reference.named_parameters()}
    if mine != ref:
        missing = sorted(set(ref) - set(mine))[:4]
        extra = sorted(set(mine) - set(ref))[:4]
        wrong = sorted(n for n in set(ref) & set(mine) if ref[n] != mine[n])[:4]
        raise ExerciseFailed(
            f"{exercise}: parameters must have Meta's names and shapes; missing {missing}, "
            f"unexpected {extra}, wrong shape {wrong}. Hint: attention.wq/wk/wv/wo, "
            f"feed_forward.w1/w2/w3, attention_norm, ffn_norm (and tok_embeddings, norm, output "
            f"for the model); L.Attention, L.FeedForward and L.RMSNorm give these names")
    # Learner buffers (rotation tables) may or may not be in the state dict: only parameters
    # are copied.
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, p in reference.named_parameters():
            params[name].copy_(p)
    return module.eval()


def check_transformer_block(make: Callable) -> bool:
    """`make(args, layer_id)` returns a pre-norm Llama block whose `forward(x, rotations)` gives
    h = x + attention(attention_norm(x)); out = h + feed_forward(ffn_norm(h))."""
    exercise = "check_transformer_block"
    args = _ARGS
    torch.manual_seed(0)
    ref = TransformerBlock(args, 0).eval()
    _randomise(ref, seed=4)
    block = _build_and_load(make, ref, exercise, args, 0)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 7, args.dim, generator=gen)
    rotations = precompute_rope(args.head_dim, args.max_seq_len, args.rope_theta)[:7]
    with torch.no_grad():
        got = call_learner(block, x.clone(), rotations, exercise=exercise)
        expected = ref(x, rotations)

        def attn(z):
            return ref.attention(z, rotations)

        ffn, n1, n2 = ref.feed_forward, ref.attention_norm, ref.ffn_norm

        def variants():
            h = x + attn(n1(x))
            post = n1(x + attn(x))
            yield n2(post + ffn(post)), ("post-norm: the norm is applied to the residual sum "
                                         "(norm(x + f(x))); Llama normalises the *input* of each "
                                         "sublayer: x + f(norm(x))")
            yield ffn(n2(h)), ("the second residual is missing: return h + "
                               "feed_forward(ffn_norm(h))")
            a = attn(n1(x))
            yield a + ffn(n2(a)), ("the first residual is missing: "
                                   "h = x + attention(attention_norm(x))")
            yield ffn(n2(a)), ("both residuals are missing: each sublayer's output is "
                               "*added* to its input")
            hs = x + attn(n2(x))
            yield hs + ffn(n1(hs)), ("the two norms are swapped: attention_norm goes before "
                                     "attention, ffn_norm before the feed-forward")
            yield h + ffn(n2(x)), (
                "the feed-forward reads x, not h: it runs after attention, on h = x + "
                "attention(...) (this 'parallel' block is GPT-J's, not Llama's)")
            yield h + ffn(n1(h)), "the feed-forward uses attention_norm; it has its own ffn_norm"

        def diagnose(g):
            for value, hint in variants():
                if torch.allclose(g, value, atol=1e-4, rtol=1e-4):
                    return hint
            return None

        compare(got, expected, exercise=exercise, atol=1e-5, rtol=1e-4, diagnose=diagnose)
    return passed(exercise, "pre-norm, two residuals, Meta's names")


def check_transformer(make: Callable) -> bool:
    """`make(args)` returns a whole Llama model whose `forward(tokens)` gives fp32 logits
    (batch, seq, vocab): embeddings -> blocks -> final norm -> output, as `L.Transformer`."""
    exercise = "check_transformer"
    args = _ARGS
    torch.manual_seed(0)
    ref = Transformer(args).eval()
    _randomise(ref, seed=6)
    model = _build_and_load(make, ref, exercise, args)
    tokens = torch.randint(0, args.vocab_size, (2, 9), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        got = call_learner(model, tokens.clone(), exercise=exercise)
        expected = ref(tokens)
        if isinstance(got, torch.Tensor) and got.shape == (2, 1, args.vocab_size):
            raise ExerciseFailed(f"{exercise}: logits for the last position only; the model "
                                 f"returns logits at every position, shape (batch, seq, vocab)")

        def trunk(h):
            for layer in ref.layers:
                h = layer(h, ref.rope[:9])
            return h

        def diagnose(g):
            if torch.allclose(g.sum(-1), torch.ones(()), atol=1e-4):
                return "these are probabilities: return the logits, before any softmax"
            emb = ref.tok_embeddings(tokens)
            if torch.allclose(g, ref.output(trunk(emb)), atol=1e-4, rtol=1e-4):
                return "the final norm is missing: logits = output(norm(h))"
            if torch.allclose(g, ref.output(ref.norm(trunk(emb * math.sqrt(args.dim)))),
                              atol=1e-4, rtol=1e-4):
                return ("the embeddings are scaled by sqrt(dim) (the original Transformer did; "
                        "Llama does not)")
            if torch.allclose(g, F.log_softmax(expected, -1), atol=1e-4, rtol=1e-4):
                return "these are log-probabilities: return the logits, before any softmax"
            return None

        compare(got, expected, exercise=exercise, atol=1e-4, rtol=1e-4, diagnose=diagnose)
    return passed(exercise, "same logits as L.Transformer at every position")
