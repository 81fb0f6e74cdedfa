"""The exercise checks of chapters 03-05: they pass on the reference and fail, with the right
hint, on the mistakes learners typically make."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import stub
from torch import nn

import llama2_edu as L
from llama2_edu.exercises import (
    check_causal_attention,
    check_gqa_attention,
    check_hidden_dim,
    check_repeat_kv,
    check_swiglu,
    check_transformer,
    check_transformer_block,
)
from llama2_edu.exercises._harness import ExerciseFailed


# ---- attention ----------------------------------------------------------------------------
def attention(q, k, v, *, diagonal=1, scale=None, dim=-1, masked=True, mask_after=False):
    """Causal attention with a knob per mistake; diagonal=1 is the correct triu mask."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale
    t = scores.shape[-1]
    future = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=diagonal)
    if mask_after:
        return scores.softmax(dim).masked_fill(future, 0.0) @ v
    if masked:
        scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(dim) @ v


def test_causal_attention_passes_on_reference(capsys):
    assert check_causal_attention(attention)
    assert "✓ check_causal_attention" in capsys.readouterr().out
    assert check_causal_attention(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))


@pytest.mark.parametrize("mistake, hint", [
    (dict(diagonal=0), "diagonal"),
    (dict(diagonal=2), "off by one"),
    (dict(masked=False), "no causal mask"),
    (dict(scale=1.0), "1/sqrt(head_dim)"),
    (dict(dim=-2), "wrong axis"),
    (dict(mask_after=True), "after the softmax"),
])
def test_causal_attention_names_the_mistake(mistake, hint):
    with pytest.raises(ExerciseFailed, match=None) as info:
        check_causal_attention(lambda q, k, v: attention(q, k, v, **mistake))
    assert hint in str(info.value)


def test_causal_attention_catches_1_over_d_and_stub_and_shape():
    with pytest.raises(ExerciseFailed, match="1/head_dim"):
        check_causal_attention(lambda q, k, v: attention(q, k, v, scale=1 / q.shape[-1]))
    with pytest.raises(ExerciseFailed, match="not implemented"):
        check_causal_attention(stub)
    with pytest.raises(ExerciseFailed, match="shape"):
        check_causal_attention(lambda q, k, v: attention(q, k, v).transpose(1, 2))


def repeat_kv(x, n_rep):  # Meta's llama/model.py
    b, t, n_kv, d = x.shape
    if n_rep == 1:
        return x
    return x[:, :, :, None, :].expand(b, t, n_kv, n_rep, d).reshape(b, t, n_kv * n_rep, d)


def test_repeat_kv_passes_on_meta_and_interleave():
    assert check_repeat_kv(repeat_kv)
    assert check_repeat_kv(lambda x, n: x.repeat_interleave(n, dim=2))


def test_repeat_kv_names_tiling_and_wrong_axis():
    with pytest.raises(ExerciseFailed, match="contiguously"):
        check_repeat_kv(lambda x, n: x.repeat(1, 1, n, 1))
    with pytest.raises(ExerciseFailed, match="sequence axis"):
        check_repeat_kv(lambda x, n: x.repeat_interleave(n, dim=1))
    with pytest.raises(ExerciseFailed, match="not implemented"):
        check_repeat_kv(stub)


def gqa(q, k, v, tile=False, **mistake):
    rep = q.shape[1] // k.shape[1]
    if tile:
        k, v = k.repeat(1, rep, 1, 1), v.repeat(1, rep, 1, 1)
    else:
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    return attention(q, k, v, **mistake)


def test_gqa_attention_passes_and_diagnoses():
    assert check_gqa_attention(gqa)
    assert check_gqa_attention(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    with pytest.raises(ExerciseFailed, match="tiling"):
        check_gqa_attention(lambda q, k, v: gqa(q, k, v, tile=True))
    with pytest.raises(ExerciseFailed, match="1/sqrt"):
        check_gqa_attention(lambda q, k, v: gqa(q, k, v, scale=1.0))
    with pytest.raises(ExerciseFailed, match="shape"):
        check_gqa_attention(lambda q, k, v: attention(q[:, : k.shape[1]], k, v))


# ---- SwiGLU ---------------------------------------------------------------------------------
def swiglu(x, w1, w2, w3, act=F.silu):
    return act(x @ w1.T) * (x @ w3.T) @ w2.T


def test_swiglu_passes_on_reference_and_library():
    assert check_swiglu(swiglu)

    def via_library(x, w1, w2, w3):
        ff = L.FeedForward(w1.shape[1], w1.shape[0])
        with torch.no_grad():
            ff.w1.weight.copy_(w1), ff.w2.weight.copy_(w2), ff.w3.weight.copy_(w3)
            return ff(x)

    assert check_swiglu(via_library)


@pytest.mark.parametrize("wrong, hint", [
    (lambda x, w1, w2, w3: swiglu(x, w3, w2, w1), "wrong branch"),
    (lambda x, w1, w2, w3: swiglu(x, w1, w2, w3, act=torch.sigmoid), "sigmoid instead of silu"),
    (lambda x, w1, w2, w3: swiglu(x, w1, w2, w3, act=F.gelu), "GEGLU"),
    (lambda x, w1, w2, w3: F.silu(x @ w1.T) * (x @ w3.T), "w2 (the down projection) is missing"),
    (lambda x, w1, w2, w3: F.silu(x @ w1.T) @ w2.T, "gate is missing"),
    (lambda x, w1, w2, w3: F.silu((x @ w1.T) * (x @ w3.T)) @ w2.T, "after the product"),
    (stub, "not implemented"),
])
def test_swiglu_names_the_mistake(wrong, hint):
    with pytest.raises(ExerciseFailed) as info:
        check_swiglu(wrong)
    assert hint in str(info.value)


def hidden_dim(dim, multiple_of, ffn_dim_multiplier):
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def test_hidden_dim_passes_and_matches_the_published_sizes():
    assert check_hidden_dim(hidden_dim)
    assert [hidden_dim(4096, 256, None), hidden_dim(5120, 256, None), hidden_dim(8192, 256, 1.0),
            hidden_dim(8192, 4096, 1.3)] == [11008, 13824, 22016, 28672]


def _round_down(dim, m, mult):
    h = int(2 * 4 * dim / 3)
    h = int(mult * h) if mult is not None else h
    return m * (h // m)


def _mult_after(dim, m, mult):
    h = m * ((int(2 * 4 * dim / 3) + m - 1) // m)
    return int(mult * h) if mult is not None else h


@pytest.mark.parametrize("wrong, hint", [
    (_round_down, "rounded down"),
    (_mult_after, "applied after rounding"),
    (lambda d, m, mult: hidden_dim(d, m, None), "ignored"),
    (lambda d, m, mult: int(2 * 4 * d / 3), "not rounded"),
    (lambda d, m, mult: hidden_dim(3 * d / 2, m, mult), "2/3 factor"),
    (lambda d, m, mult: float(hidden_dim(d, m, mult)), "float"),
    (stub, "not implemented"),
])
def test_hidden_dim_names_the_mistake(wrong, hint):
    with pytest.raises(ExerciseFailed) as info:
        check_hidden_dim(wrong)
    assert hint in str(info.value)


# ---- the block and the model ---------------------------------------------------------------
class Block(nn.Module):
    """A learner's block: the library's parts, wired by `wiring`."""

    wiring = "pre-norm"

    def __init__(self, args, layer_id):
        super().__init__()
        self.attention = L.Attention(args, layer_id)
        self.feed_forward = L.FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = L.RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = L.RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, rotations):
        def attn(z):
            return self.attention(z, rotations)

        ffn, n1, n2, w = self.feed_forward, self.attention_norm, self.ffn_norm, self.wiring
        if w == "pre-norm":
            h = x + attn(n1(x))
            return h + ffn(n2(h))
        if w == "post-norm":
            h = n1(x + attn(x))
            return n2(h + ffn(h))
        if w == "no-residual-2":
            h = x + attn(n1(x))
            return ffn(n2(h))
        if w == "no-residual-1":
            h = attn(n1(x))
            return h + ffn(n2(h))
        if w == "swapped":
            h = x + attn(n2(x))
            return h + ffn(n1(h))
        if w == "parallel":
            return x + attn(n1(x)) + ffn(n2(x))
        raise ValueError(w)


def variant(name):
    return type(f"Block_{name}", (Block,), {"wiring": name})


def test_transformer_block_passes_on_class_and_library():
    assert check_transformer_block(Block)
    assert check_transformer_block(L.TransformerBlock)


@pytest.mark.parametrize("wiring, hint", [
    ("post-norm", "post-norm"),
    ("no-residual-2", "second residual is missing"),
    ("no-residual-1", "first residual is missing"),
    ("swapped", "norms are swapped"),
    ("parallel", "parallel"),
])
def test_transformer_block_names_the_mistake(wiring, hint):
    with pytest.raises(ExerciseFailed) as info:
        check_transformer_block(variant(wiring))
    assert hint in str(info.value)


def test_transformer_block_requires_meta_names():
    class Renamed(Block):
        def __init__(self, args, layer_id):
            super().__init__(args, layer_id)
            self.mlp = self.feed_forward
            del self.feed_forward

    with pytest.raises(ExerciseFailed, match="Meta's names"):
        check_transformer_block(Renamed)
    with pytest.raises(ExerciseFailed, match="not implemented"):
        check_transformer_block(stub)


class Model(L.Transformer):
    """A learner's model: the library's, with one mistake switched on."""

    mistake = None

    def forward(self, tokens):
        h = self.tok_embeddings(tokens)
        if self.mistake == "scaled":
            h = h * math.sqrt(self.args.dim)
        t = tokens.shape[1]
        for layer in self.layers:
            h = layer(h, self.rope[:t])
        if self.mistake != "no-norm":
            h = self.norm(h)
        logits = self.output(h)
        if self.mistake == "softmax":
            return logits.softmax(-1)
        if self.mistake == "last":
            return logits[:, -1:]
        return logits


@pytest.mark.parametrize("mistake, hint", [
    (None, None),
    ("scaled", "sqrt(dim)"),
    ("no-norm", "final norm is missing"),
    ("softmax", "probabilities"),
    ("last", "last position only"),
])
def test_transformer_check(mistake, hint):
    cls = type("M", (Model,), {"mistake": mistake})
    if hint is None:
        assert check_transformer(cls)
        assert check_transformer(L.Transformer)
        return
    with pytest.raises(ExerciseFailed) as info:
        check_transformer(cls)
    assert hint in str(info.value)
