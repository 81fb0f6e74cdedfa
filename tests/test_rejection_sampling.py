import copy

import pytest
import torch
from conftest import tiny_model as _tiny

from llama2_edu import dpo
from llama2_edu import rejection_sampling as rs

pytestmark = pytest.mark.usefixtures("one_thread")


def _count7(prompts, answers, infos):
    return torch.tensor([float(sum(t == 7 for t in a)) for a in answers])


def test_best_of_k_keeps_the_highest_scoring_sample():
    model = _tiny()
    prompts = [[1, 5], [1, 6, 8], [1, 9]]
    picked = rs.best_of_k(model, prompts, _count7, k=5, max_gen_len=10, no_eos_penalty=0.5,
                          generator=torch.Generator().manual_seed(0))
    assert len(picked.samples) == 3 and all(len(s) == 5 for s in picked.samples)
    assert picked.scores.shape == (3, 5) and picked.ended.shape == (3, 5)
    for i, samples in enumerate(picked.samples):
        raw = torch.tensor([float(sum(t == 7 for t in a)) for a in samples])
        expected = raw - 0.5 * (~picked.ended[i]).float()
        torch.testing.assert_close(picked.scores[i], expected)
        assert picked.best_answers[i] == samples[int(expected.argmax())]
    torch.testing.assert_close(picked.best_scores, picked.scores.max(1).values)
    # The samples of one prompt differ (temperature 1 on a random model).
    assert len({tuple(a) for a in picked.samples[0]}) > 1


def test_best_of_n_curve_max_rises_median_does_not():
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]])
    best, median = rs.best_of_n_curve(scores)
    torch.testing.assert_close(best, torch.tensor([1.5, 2.0, 2.5, 3.0]))
    # torch.median takes the lower middle value for even n.
    torch.testing.assert_close(median, torch.tensor([1.5, 1.0, 1.5, 1.0]))


def test_rejection_sampling_round_moves_the_model_towards_its_best_answers():
    pytest.importorskip("llama2_edu.sft")
    from llama2_edu.sft import SFTConfig

    def low_share(prompts, answers, infos):  # share of answer tokens from the lower half
        return torch.tensor([sum(t < 64 for t in a) / max(len(a), 1) for a in answers])

    model = _tiny()
    prompts = [[1, 20 + i] for i in range(12)]
    gen = torch.Generator().manual_seed(0)
    kw = {"k": 4, "max_gen_len": 8, "no_eos_penalty": 0.0, "generator": gen}
    before = rs.best_of_k(model, prompts, low_share, **kw)
    config = SFTConfig(lr=3e-3, warmup_steps=1, epochs=8, batch_size=6)
    for _ in range(2):
        snapshot = copy.deepcopy(model)
        picked, losses = rs.rejection_sampling_round(model, prompts, low_share,
                                                     sft_config=config, **kw)
        assert losses[-1] < losses[0]
        assert picked.best_scores.mean() > picked.scores.mean()  # best of 4 beats the average
        # The kept answers became much more likely than under the model that sampled them.
        best = [a + [2] if e else a for a, e in zip(picked.best_answers, picked.best_ended)]
        gain = dpo.sequence_logprobs(model, prompts, best) - dpo.sequence_logprobs(
            snapshot, prompts, best)
        assert gain.min() > 1.0, gain
    after = rs.best_of_k(model, prompts, low_share, **kw)
    assert after.scores.mean() > before.scores.mean() + 0.05, (before.scores.mean(),
                                                               after.scores.mean())


def test_sample_k_rejects_bad_arguments():
    model = _tiny()
    with pytest.raises(ValueError, match="k must"):
        rs.sample_k(model, [[1]], 0, 4)
    with pytest.raises(ValueError, match="temperature"):
        rs.sample_k(model, [[1]], 2, 4, temperature=0.0)
