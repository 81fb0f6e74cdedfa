import torch

import llama2_edu as L
from llama2_edu.cpu_layout import relayout_for_decoding


def test_relayout_changes_memory_not_values():
    torch.manual_seed(0)
    model = L.Transformer(L.ModelArgs.preset("tiny-gqa")).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = torch.randint(0, 128, (2, 12))
    logits = model(tokens)
    relayout_for_decoding(model)
    assert not model.output.weight.is_contiguous()  # 128 x 64: wider than tall, transposed
    assert model.output.weight.t().is_contiguous()
    assert model.layers[0].feed_forward.w2.weight.is_contiguous()  # tall: left as it was
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name
    torch.testing.assert_close(model(tokens), logits, rtol=1e-6, atol=1e-6)
    relayout_for_decoding(model)  # idempotent
    assert model.output.weight.t().is_contiguous()
    assert L.generate(model, [[1, 2]], 8, temperature=0.0) == L.generate(
        model, [[1, 2]], 8, temperature=0.0)
