import pytest
import torch

import llama2_edu as L
from llama2_edu.generation import sample_next, top_p_filter


def test_top_p_keeps_the_token_that_crosses_p():
    probs = torch.tensor([[0.2, 0.5, 0.3]])
    assert (top_p_filter(probs, 0.6) > 0).sum().item() == 2
    assert (top_p_filter(probs, 0.4) > 0).sum().item() == 1
    torch.testing.assert_close(top_p_filter(probs, 0.6), torch.tensor([[0.0, 0.625, 0.375]]))
    torch.testing.assert_close(top_p_filter(probs, 1.0), probs)


def test_temperature_zero_is_greedy_and_sampling_is_seeded():
    logits = torch.tensor([[0.0, 3.0, 1.0]])
    assert sample_next(logits, 0.0, 1.0).item() == 1
    draws = [sample_next(logits.expand(500, 3), 1.0, 1.0, torch.Generator().manual_seed(7))
             for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    counts = torch.bincount(draws[0], minlength=3).float() / 500
    torch.testing.assert_close(counts, torch.softmax(logits[0], -1), atol=0.06, rtol=0)


def _model(**fields):
    torch.manual_seed(0)
    return L.Transformer(L.ModelArgs.preset("tiny-gqa", **fields)).eval()


def test_batched_generation_with_mixed_lengths_equals_one_at_a_time():
    model = _model()
    prompts = [[1, 5, 9, 12, 40, 41], [1, 7], [1, 3, 3, 3]]
    batched = L.generate(model, prompts, max_gen_len=12, temperature=0.0, eos_id=None)
    alone = [L.generate(model, [p], max_gen_len=12, temperature=0.0, eos_id=None)[0]
             for p in prompts]
    assert batched == alone
    assert all(len(row) == 12 for row in batched)


def test_stops_at_eos_per_row_and_streams():
    model = _model()
    prompts = [[1, 5], [1, 9, 2, 4]]
    free = L.generate(model, prompts, max_gen_len=10, temperature=0.0, eos_id=None)
    eos = free[0][3]  # pretend the 4th token of row 0 is EOS
    streamed = []
    out = L.generate(model, prompts, max_gen_len=10, temperature=0.0, eos_id=eos,
                     on_token=lambda row, tok: streamed.append((row, tok)))
    assert out[0] == free[0][:free[0].index(eos)]
    expected_1 = free[1][:free[1].index(eos)] if eos in free[1] else free[1]
    assert out[1] == expected_1
    assert [t for r, t in streamed if r == 0] == out[0]
    assert [t for r, t in streamed if r == 1] == out[1]


def test_seeded_sampling_is_reproducible():
    model = _model()
    runs = [L.generate(model, [[1, 2]], 16, temperature=1.0, top_p=0.9,
                       generator=torch.Generator().manual_seed(123)) for _ in range(2)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-0.1), "temperature must be >= 0.*-0.1"),
    (dict(top_p=0.0), r"top_p must lie in \(0, 1\], got 0.0"),
    (dict(top_p=1.5), "got 1.5"),
    (dict(max_gen_len=120), "prompt length 3 \\+ max_gen_len 120 = 123 exceeds max_seq_len 64"),
    (dict(max_gen_len=0), "max_gen_len must be >= 1"),
])
def test_bad_parameters_name_the_value(kwargs, match):
    model = _model(max_seq_len=64)
    with pytest.raises(ValueError, match=match):
        L.generate(model, [[1, 2, 3]], **{"max_gen_len": 4, **kwargs})


def test_empty_prompt_is_rejected():
    with pytest.raises(ValueError, match="at least one token"):
        L.generate(_model(), [[1], []], 4)
