import pytest
import torch

import llama2_edu as L


@pytest.mark.parametrize("preset", ["tiny-mha", "tiny-gqa", "tiny-mqa"])
def test_incremental_decoding_equals_full_forward(preset):
    torch.manual_seed(0)
    model = L.Transformer(L.ModelArgs.preset(preset)).eval()
    tokens = torch.randint(0, 128, (3, 40))
    full = model(tokens)
    cache = model.new_cache(3, 64)
    chunks, pos = [], 0
    for size in (9, 16, 1, 3):  # prefill in uneven chunks
        chunks.append(model(tokens[:, pos:pos + size], start_pos=pos, cache=cache))
        pos += size
    while pos < 40:  # then one token at a time
        chunks.append(model(tokens[:, pos:pos + 1], start_pos=pos, cache=cache))
        pos += 1
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=0, atol=1e-5)


def test_last_only_equals_the_last_position():
    model = L.Transformer(L.ModelArgs.preset("tiny-gqa"))
    tokens = torch.randint(0, 128, (2, 10))
    torch.testing.assert_close(model(tokens, last_only=True), model(tokens)[:, -1:])


def test_cache_overflow_names_the_limit():
    model = L.Transformer(L.ModelArgs.preset("tiny-gqa"))
    cache = model.new_cache(1, 8)
    with pytest.raises(ValueError, match="8 positions"):
        model(torch.zeros(1, 9, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="batch 1"):
        model(torch.zeros(2, 3, dtype=torch.long), cache=cache)
