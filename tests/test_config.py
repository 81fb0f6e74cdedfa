import pytest
import torch

import llama2_edu as L

PUBLISHED = {
    "llama2-7b": (6_738_415_616, 11008),
    "llama2-13b": (13_015_864_320, 13824),
    "llama2-34b": (33_743_970_304, 22016),
    "llama2-70b": (68_976_648_192, 28672),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_and_hidden_size(name):
    args = L.ModelArgs.preset(name)
    params, hidden = PUBLISHED[name]
    assert args.hidden_dim == hidden
    assert L.count_parameters(args) == params


@pytest.mark.parametrize("name", sorted(L.PRESETS))
def test_formula_equals_numel_of_the_model(name):
    args = L.ModelArgs.preset(name)
    with torch.device("meta"):  # the shapes without the memory
        model = L.Transformer(args)
    assert sum(p.numel() for p in model.parameters()) == L.count_parameters(args)


def test_published_shapes():
    a70 = L.ModelArgs.preset("llama2-70b")
    assert (a70.dim, a70.n_layers, a70.n_heads, a70.kv_heads) == (8192, 80, 64, 8)
    a34 = L.ModelArgs.preset("llama2-34b")
    assert (a34.dim, a34.n_layers, a34.n_heads, a34.kv_heads, a34.rope_theta) == (
        8192, 48, 64, 8, 10000.0)
    for name in PUBLISHED:
        args = L.ModelArgs.preset(name)
        assert (args.norm_eps, args.vocab_size, args.max_seq_len) == (1e-5, 32000, 4096)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(KeyError, match="llama2-7b") as info:
        L.ModelArgs.preset("llama2-8b")
    assert "llama2-8b" in str(info.value)


def test_preset_overrides():
    assert L.ModelArgs.preset("toy", n_layers=2).n_layers == 2


@pytest.mark.parametrize("bad, match", [
    (dict(dim=100, n_heads=3), "divisible"),
    (dict(n_heads=4, n_kv_heads=3, dim=64), "n_kv_heads"),
    (dict(n_heads=4, n_kv_heads=8, dim=64), "n_kv_heads"),
    (dict(dim=0), "dim"),
])
def test_bad_args_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        L.ModelArgs(**bad)


def test_kv_cache_bytes():
    # 7B, bf16: 2 (K,V) * 32 layers * 32 heads * 128 dims * 2 bytes = 512 KiB per token.
    args = L.ModelArgs.preset("llama2-7b")
    assert L.kv_cache_bytes(args, 1, 1, torch.bfloat16) == 512 * 1024
    # 70B with GQA (8 KV heads) at 4096 tokens: 1.25 GiB per sequence; as MHA it would be 10 GiB.
    a70 = L.ModelArgs.preset("llama2-70b")
    assert L.kv_cache_bytes(a70, 1, 4096, torch.bfloat16) == int(1.25 * 2**30)
    assert L.kv_cache_bytes(a70.replace(n_kv_heads=None), 1, 4096) == 10 * 2**30
    model = L.Transformer(L.ModelArgs.preset("tiny-gqa"))
    assert model.new_cache(3, 50).nbytes() == L.kv_cache_bytes(model.args, 3, 50, torch.float32)
