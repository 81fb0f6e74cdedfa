"""Properties of each component, checked against its math."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import llama2_edu as L
from llama2_edu.model import RMSNorm, apply_rope, causal_mask, precompute_rope


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(min_value=1e-2, max_value=1e3), seed=st.integers(0, 2**16))
def test_rmsnorm_is_invariant_to_rescaling(scale, seed):
    torch.manual_seed(seed)
    norm = RMSNorm(32, eps=1e-8)
    x = torch.randn(4, 32)
    torch.testing.assert_close(norm(x * scale), norm(x), rtol=1e-4, atol=1e-5)


def test_rmsnorm_matches_torch_and_computes_in_fp32():
    norm = RMSNorm(64, eps=1e-5)
    torch.nn.init.normal_(norm.weight)
    ref = torch.nn.RMSNorm(64, eps=1e-5)
    ref.weight.data.copy_(norm.weight.data)
    x = torch.randn(3, 5, 64)
    torch.testing.assert_close(norm(x), ref(x))
    # bf16 in, bf16 out, and no worse than rounding the fp32 result to bf16.
    xb = x.bfloat16()
    out = RMSNorm(64).to(torch.bfloat16)(xb)
    assert out.dtype == torch.bfloat16
    exact = torch.nn.functional.rms_norm(xb.float(), (64,), eps=1e-5)
    assert (out.float() - exact).abs().max() <= 2 * (exact.bfloat16().float() - exact).abs().max()


def test_rope_preserves_norms():
    rotations = precompute_rope(16, 64)
    x = torch.randn(2, 64, 3, 16)
    torch.testing.assert_close(apply_rope(x, rotations).norm(dim=-1), x.norm(dim=-1))


def test_rope_scores_depend_only_on_relative_offset():
    rotations = precompute_rope(32, 200, theta=10000.0)
    q, k = torch.randn(32), torch.randn(32)

    def score(m, n):
        qm = apply_rope(q.view(1, 1, 1, 32), rotations[m:m + 1])
        kn = apply_rope(k.view(1, 1, 1, 32), rotations[n:n + 1])
        return (qm * kn).sum()

    for offset in (0, 1, 7, 50):
        scores = torch.stack([score(m + offset, m) for m in (0, 13, 120)])
        torch.testing.assert_close(scores, scores[0].expand(3), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(score(10, 0), score(11, 0))


def test_rope_is_identity_at_position_zero():
    rotations = precompute_rope(8, 4)
    x = torch.randn(1, 1, 2, 8)
    torch.testing.assert_close(apply_rope(x, rotations[:1]), x)


def test_rope_rotates_adjacent_pairs_by_the_expected_angle():
    """Meta's layout: features (2i, 2i+1) form pair i, turned by pos * theta^(-2i/d)."""
    head_dim, theta, pos = 4, 100.0, 3
    x = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 1, head_dim)
    out = apply_rope(x, precompute_rope(head_dim, 8, theta)[pos:pos + 1]).flatten()
    angles = pos * theta ** (-torch.arange(0, head_dim, 2) / head_dim)
    expected = torch.stack((angles.cos(), angles.sin()), dim=-1).flatten()
    torch.testing.assert_close(out, expected)


def test_gqa_with_all_heads_equals_mha():
    torch.manual_seed(0)
    mha = L.Transformer(L.ModelArgs.preset("tiny-mha"))
    gqa = L.Transformer(L.ModelArgs.preset("tiny-mha", n_kv_heads=4))
    gqa.load_state_dict(mha.state_dict())
    tokens = torch.randint(0, 128, (2, 17))
    torch.testing.assert_close(gqa(tokens), mha(tokens), rtol=0, atol=0)


def test_gqa_equals_mha_with_repeated_kv_heads():
    """A GQA model is an MHA model whose K/V heads are copied within each group."""
    torch.manual_seed(0)
    gqa = L.Transformer(L.ModelArgs.preset("tiny-gqa"))
    mha = L.Transformer(L.ModelArgs.preset("tiny-mha"))
    sd = gqa.state_dict()
    head_dim, group = gqa.args.head_dim, gqa.args.n_heads // gqa.args.kv_heads
    for name in list(sd):
        if name.endswith(("wk.weight", "wv.weight")):
            sd[name] = sd[name].view(-1, head_dim, 64).repeat_interleave(group, 0).reshape(-1, 64)
    mha.load_state_dict(sd)
    tokens = torch.randint(0, 128, (2, 17))
    torch.testing.assert_close(mha(tokens), gqa(tokens), rtol=1e-5, atol=1e-5)


def test_causal_mask_shapes():
    assert causal_mask(1, 10) == (None, False)
    assert causal_mask(5, 5) == (None, True)
    mask, causal = causal_mask(2, 5)
    assert not causal
    assert mask.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def test_the_future_cannot_change_the_past():
    torch.manual_seed(0)
    model = L.Transformer(L.ModelArgs.preset("tiny-gqa"))
    a = torch.randint(0, 128, (1, 20))
    b = a.clone()
    b[0, 12:] = (b[0, 12:] + 1) % 128
    torch.testing.assert_close(model(a)[:, :12], model(b)[:, :12])


def test_state_dict_keys_are_metas():
    model = L.Transformer(L.ModelArgs.preset("tiny-gqa"))
    keys = set(model.state_dict())
    expected = {"tok_embeddings.weight", "norm.weight", "output.weight"}
    for i in range(2):
        expected |= {f"layers.{i}.{n}.weight" for n in (
            "attention.wq", "attention.wk", "attention.wv", "attention.wo", "feed_forward.w1",
            "feed_forward.w2", "feed_forward.w3", "attention_norm", "ffn_norm")}
    assert keys == expected


def test_a_bf16_model_keeps_fp32_rotations_and_returns_fp32_logits():
    torch.manual_seed(0)
    model = L.Transformer(L.ModelArgs.preset("tiny-gqa"))
    tokens = torch.randint(0, 128, (1, 40))
    reference = model(tokens)
    model.to(torch.bfloat16)
    assert model.rope.dtype == torch.complex64  # not cast: bf16 angles would be far off
    logits = model(tokens)
    assert logits.dtype == torch.float32
    # bf16 weights and activations: close to fp32 at every position, including late ones
    # where wrong rotations would show most.
    error = (logits - reference).abs().max() / reference.abs().max()
    assert error < 0.05, f"relative error {error:.3f}"


def test_positions_beyond_max_seq_len_are_rejected():
    model = L.Transformer(L.ModelArgs.preset("tiny-gqa", max_seq_len=16))
    with pytest.raises(ValueError, match="max_seq_len 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len 16"):
        model.new_cache(1, 32)
