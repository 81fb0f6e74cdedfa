"""Our model against an independent implementation: transformers' LlamaForCausalLM."""

import pytest
import torch

from hf_reference import hf_twin, random_model

CONFIGS = {
    # name: (n_kv_heads, extra fields) -- non-default eps, theta and FFN multiplier throughout
    "mha": dict(n_kv_heads=None),
    "gqa": dict(n_kv_heads=2),
    "mqa": dict(n_kv_heads=1),
}
ODD = dict(norm_eps=1e-6, rope_theta=500.0, ffn_dim_multiplier=1.3)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_logits_match_transformers_at_every_position(kind):
    model = random_model(seed=1, **CONFIGS[kind], **ODD)
    hf = hf_twin(model)
    tokens = torch.randint(0, 128, (2, 48), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    assert ours.shape == theirs.shape == (2, 48, 128)
    assert (ours - theirs).abs().max().item() < 1e-5


def test_greedy_generation_matches_transformers_token_for_token():
    import llama2_edu as L

    model = random_model(seed=3, n_kv_heads=2, **ODD)
    hf = hf_twin(model)
    prompt = [1, 17, 42, 99, 5]
    ours = L.generate(model, [prompt], max_gen_len=32, temperature=0.0, eos_id=None)[0]
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                          max_new_tokens=32, min_new_tokens=32, pad_token_id=0)
    assert ours == out[0, len(prompt):].tolist()
    assert len(ours) == 32
