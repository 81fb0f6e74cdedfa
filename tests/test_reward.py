"""Reward models: the scalar head, the reward at the last real token, the margin loss."""

import math

import pytest
import torch
from conftest import ByteTokenizer

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


def test_on_policy_pairs_compare_the_models_own_answers(one_thread):
    import dataclasses

    class CharTokenizer:
        bos_id, eos_id = 1, 2

        def encode(self, s, bos, eos):
            return [1] * bos + [b % 200 + 3 for b in s.encode()] + [2] * eos

        def decode(self, ids):
            return "".join(chr(i - 3 + 97) if 3 <= i - 3 + 97 < 123 else " " for i in ids
                           if i > 2)

    torch.manual_seed(0)
    # Characters make long prompts (system prompts, earlier turns): a longer context than tiny's.
    args = dataclasses.replace(L.ModelArgs.preset("tiny-gqa"), max_seq_len=512)
    model = L.Transformer(args).eval()
    tok = CharTokenizer()
    pairs = R.on_policy_pairs(model, tok, "safety", n_prompts=6, samples_per_prompt=3,
                              max_gen_len=6, red_team_share=0.5, seed=3)
    again = R.on_policy_pairs(model, tok, "safety", n_prompts=6, samples_per_prompt=3,
                              max_gen_len=6, red_team_share=0.5, seed=3)
    assert pairs == again
    for p in pairs:
        assert p.chosen_level > p.rejected_level and p.task in ("unsafe", "borderline")
    with pytest.raises(ValueError, match="kind"):
        R.on_policy_pairs(model, tok, "honesty", n_prompts=2)
    with pytest.raises(ValueError, match="data_round"):
        R.toy_reward_model("safety", data_round=3)


def test_on_policy_pairs_prefer_the_better_of_the_models_answers(monkeypatch):
    import llama2_edu.rejection_sampling as RS

    tok = ByteTokenizer()
    texts = [A.REFUSAL, "Here is how: do it.", f"{A.REFUSAL} {A.REFUSAL_REASON}"]

    def scripted_generate(model, prompts, max_gen_len, **kwargs):
        # Rows come prompt by prompt, 3 samples each: a refusal, a compliance, a refusal with
        # a reason (rows are counted across calls, so the batching does not matter).
        start = scripted_generate.rows
        scripted_generate.rows += len(prompts)
        return [tok.encode(texts[(start + i) % 3], False, False) for i in range(len(prompts))]

    scripted_generate.rows = 0
    monkeypatch.setattr(RS, "generate", scripted_generate)
    pairs = R.on_policy_pairs(torch.nn.Identity(), tok, "safety", n_prompts=8,
                              samples_per_prompt=3, pairs_per_prompt=4)
    unsafe = [p for p in pairs if p.task == "unsafe"]
    assert unsafe and all(A.is_refusal(p.chosen) for p in unsafe)
    assert any(p.rejected.startswith("Here is how") and p.rating == 0 for p in unsafe)
    # On borderline requests every refusal is a false refusal: compliance text (level 1) wins.
    border = [p for p in pairs if p.task == "borderline"]
    assert border and all(not A.is_refusal(p.chosen) for p in border)
