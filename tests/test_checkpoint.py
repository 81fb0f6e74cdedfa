import pytest
import torch

import llama2_edu as L
from llama2_edu.checkpoint import (args_from_hf_config, hf_config_dict, hf_to_meta, meta_to_hf,
                                   permute_for_hf, unpermute_from_hf)


@pytest.mark.parametrize("preset", ["tiny-mha", "tiny-gqa", "tiny-mqa"])
def test_meta_hf_round_trip_is_identity(preset):
    args = L.ModelArgs.preset(preset)
    sd = L.Transformer(args).state_dict()
    hf = meta_to_hf(sd, args)
    assert "lm_head.weight" in hf and "model.layers.1.self_attn.k_proj.weight" in hf
    back = hf_to_meta(hf, args)
    assert back.keys() == sd.keys()
    for name in sd:
        assert torch.equal(back[name], sd[name]), name


def test_permute_moves_pairs_to_halves():
    # One head of dim 4, pairs (0,1), (2,3): HF wants [first of each pair, second of each pair].
    w = torch.arange(4.0).view(4, 1)
    assert permute_for_hf(w, n_heads=1).flatten().tolist() == [0.0, 2.0, 1.0, 3.0]
    assert torch.equal(unpermute_from_hf(permute_for_hf(w, 1), 1), w)


def test_hf_inv_freq_is_ignored_and_unknown_names_rejected():
    args = L.ModelArgs.preset("tiny-gqa")
    hf = meta_to_hf(L.Transformer(args).state_dict(), args)
    hf["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    assert "layers.0.attention.wq.weight" in hf_to_meta(hf, args)
    hf["model.layers.0.mlp.extra.weight"] = torch.ones(1)
    with pytest.raises(KeyError, match="mlp.extra"):
        hf_to_meta(hf, args)


@pytest.mark.parametrize("preset", ["llama2-7b", "llama2-70b", "tiny-gqa"])
def test_hf_config_round_trip(preset):
    args = L.ModelArgs.preset(preset)
    back = args_from_hf_config(hf_config_dict(args))
    assert back.hidden_dim == args.hidden_dim
    assert L.count_parameters(back) == L.count_parameters(args)
    assert (back.dim, back.n_heads, back.kv_heads, back.rope_theta) == (
        args.dim, args.n_heads, args.kv_heads, args.rope_theta)
