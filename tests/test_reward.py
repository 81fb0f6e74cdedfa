"""Reward models: the scalar head, the reward at the last real token, the margin loss."""

import math

import pytest
import torch

import llama2_edu as L
from llama2_edu import reward as R
from llama2_edu.data import assistant as A
from llama2_edu.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [m["content"] for e in A.assistant_examples(300, seed=0) for m in e.with_answer()]
    return train_tokenizer(texts, 400, tmp_path_factory.mktemp("tok") / "t.model",
                           user_defined_symbols=["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"])


def tiny_rm(vocab_size=128, seed=0):
    torch.manual_seed(seed)
    rm = R.RewardModel.from_model(L.Transformer(L.ModelArgs.preset("tiny-gqa",
                                                                  vocab_size=vocab_size)))
    torch.nn.init.normal_(rm.head.weight, std=0.5)  # a head that is not all zeros
    return rm


def test_margin_loss_equals_the_hand_computed_value():
    r_chosen = torch.tensor([1.0, 0.5, 2.0, -1.0])
    r_rejected = torch.tensor([0.0, 0.5, 0.5, -0.5])
    ratings = torch.tensor([0, 2, 1, 3])  # significantly, slightly, better, negligibly
    # small margins (Table 27): 1, 2/3, 1/3, 0  ->  m = [1, 1/3, 2/3, 0]
    diffs = [1.0 - 0.0 - 1.0, 0.5 - 0.5 - 1 / 3, 2.0 - 0.5 - 2 / 3, -1.0 + 0.5 - 0.0]
    expected = sum(math.log(1 + math.exp(-d)) for d in diffs) / 4  # -log sigmoid(d)
    got = R.ranking_loss(r_chosen, r_rejected, R.margins_for(ratings, "small"))
    assert got.item() == pytest.approx(expected, abs=1e-6)
    # Large margins 3, 2, 1, 0 and no margin.
    large = [1.0 - 3.0, 0.0 - 1.0, 1.5 - 2.0, -0.5]
    assert R.ranking_loss(r_chosen, r_rejected, R.margins_for(ratings, "large")).item() == \
        pytest.approx(sum(math.log1p(math.exp(-d)) for d in large) / 4, abs=1e-6)
    assert R.ranking_loss(r_chosen, r_rejected).item() == pytest.approx(
        sum(math.log1p(math.exp(-d)) for d in [1.0, 0.0, 1.5, -0.5]) / 4, abs=1e-6)
    with pytest.raises(ValueError, match="margin"):
        R.margins_for(ratings, "huge")


def test_reward_is_read_at_the_last_real_token_of_a_padded_batch():
    rm = tiny_rm().eval()
    torch.manual_seed(1)
    rows = [torch.randint(3, 128, (n,)).tolist() for n in (9, 4, 6)]
    tokens, lengths = R.right_pad(rows, pad_id=0)
    assert tokens.shape == (3, 9) and lengths.tolist() == [9, 4, 6]
    with torch.no_grad():
        batched = rm(tokens, lengths)
        alone = torch.stack([rm(torch.tensor([r]))[0] for r in rows])
        # The head applied to the hidden state at position length - 1.
        per_position = rm.head(rm.trunk(tokens)).squeeze(-1)
        # Other padding values change nothing (causal attention never looks right).
        repadded = rm(R.right_pad(rows, pad_id=7)[0], lengths)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched, per_position[torch.arange(3), lengths - 1])
    torch.testing.assert_close(batched, repadded)
    assert not torch.allclose(batched, per_position[:, -1])  # the last column is padding
    with pytest.raises(ValueError, match="lengths"):
        rm(tokens, torch.tensor([10, 4, 6]))


def test_the_scalar_head_replaces_the_next_token_head():
    base = L.Transformer(L.ModelArgs.preset("tiny-gqa"))
    rm = R.RewardModel.from_model(base)
    keys = set(rm.state_dict())
    assert "trunk.output.weight" not in keys and {"head.weight", "head.bias"} <= keys
    assert keys - {"head.weight", "head.bias"} == {f"trunk.{k}" for k in base.state_dict()
                                                   if k != "output.weight"}
    torch.testing.assert_close(rm.trunk.tok_embeddings.weight, base.tok_embeddings.weight)
    assert base.output.weight.shape[0] == base.args.vocab_size  # the source is untouched
    # The zero head: every reward starts at 0, so the first loss is -log sigmoid(-m).
    tokens = torch.randint(0, 128, (2, 5))
    assert torch.equal(rm(tokens), torch.zeros(2))


def test_pair_accuracy_per_rating():
    acc = R.pair_accuracy(torch.tensor([1.0, 0.0, 2.0, 0.0]), torch.tensor([0.0, 1.0, 1.0, 0.0]),
                          torch.tensor([0, 0, 1, 3]))
    assert acc["overall"] == 0.5 and acc["significantly better"] == 0.5
    assert acc["better"] == 1.0 and acc["negligibly better / unsure"] == 0.0
    assert "slightly better" not in acc


def test_training_separates_chosen_from_rejected(tok):
    pairs = A.preference_pairs(48, kind="safety", seed=0)
    data = R.encode_pairs(tok, pairs)
    torch.manual_seed(0)
    args = L.ModelArgs.preset("tiny-gqa", vocab_size=tok.n_words, max_seq_len=256)
    rm = R.RewardModel.from_model(L.Transformer(args))
    losses = R.train_reward_model(rm, data, R.RewardConfig(lr=3e-3, batch_size=16, epochs=3,
                                                           margin="small"))
    assert len(losses) == 9 and losses[0] == pytest.approx(
        R.ranking_loss(torch.zeros(16), torch.zeros(16),
                       R.margins_for(data.ratings[:16], "small")).item(), abs=0.5)
    r_c, r_r = R.score_all(rm, data)
    assert R.pair_accuracy(r_c, r_r, data.ratings)["overall"] > 0.7


def test_exercise_checks_pass_the_reference_and_catch_mistakes():
    import torch.nn.functional as F

    from llama2_edu.exercises import check_last_token_reward, check_ranking_loss
    from llama2_edu.exercises._harness import ExerciseFailed

    assert check_ranking_loss(R.ranking_loss)
    assert check_last_token_reward(R.reward_at_last_token)
    with pytest.raises(ExerciseFailed, match="subtracted"):
        check_ranking_loss(lambda c, r, m: -F.logsigmoid(c - r + m).mean())
    with pytest.raises(ExerciseFailed, match="right-padded"):
        check_last_token_reward(lambda s, n: s[:, -1])
