"""Builds transformers' LlamaForCausalLM on the same weights as one of our models."""

import torch

import llama2_edu as L
from llama2_edu.checkpoint import hf_config, meta_to_hf


def hf_twin(model: L.Transformer):
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM(hf_config(model.args)).eval()
    hf.load_state_dict(meta_to_hf(model.state_dict(), model.args), strict=True)
    return hf


def random_model(seed: int = 0, **fields) -> L.Transformer:
    torch.manual_seed(seed)
    args = L.ModelArgs(**{**dict(dim=64, n_layers=2, n_heads=4, vocab_size=128,
                                 multiple_of=16, max_seq_len=96), **fields})
    model = L.Transformer(args).eval()
    # Norm weights start at 1; randomise them so that a misplaced norm cannot hide.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model
