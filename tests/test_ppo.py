import copy
import math

import pytest
import torch
from conftest import ByteTokenizer
from conftest import tiny_model as _tiny

from llama2_edu import ppo

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pack_marks_answer_tokens_at_action_offsets():
    tokens, mask = ppo.pack([[1, 5, 6], [1, 9]], [[7, 8, 2], [3]], pad_id=0)
    assert tokens.tolist() == [[1, 5, 6, 7, 8, 2], [1, 9, 3, 0, 0, 0]]
    # action j produces token j + 1: row 0's answer is tokens 3..5, i.e. actions 2..4.
    assert mask.tolist() == [[False, False, True, True, True],
                             [False, True, False, False, False]]
    with pytest.raises(ValueError, match="at least one token"):
        ppo.pack([[]], [[4]])


def test_logprobs_are_gathered_from_the_previous_position():
    model = _tiny()
    tokens = torch.tensor([[1, 17, 33, 5, 90, 2], [1, 4, 4, 8, 60, 11]])
    temperature = 0.7
    logp, entropy = ppo.token_logprobs(model, tokens, temperature, with_entropy=True)
    assert logp.shape == (2, 5)
    with torch.no_grad():
        for t in range(1, tokens.shape[1]):
            # Token t was drawn from the distribution the model outputs after seeing tokens < t.
            logits = model(tokens[:, :t])[:, -1] / temperature
            dist = torch.log_softmax(logits, -1)
            expected = dist.gather(-1, tokens[:, t:t + 1]).squeeze(-1)
            torch.testing.assert_close(logp[:, t - 1], expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(entropy[:, t - 1], -(dist.exp() * dist).sum(-1),
                                       atol=1e-5, rtol=1e-5)
        # The off-by-one mistake (scoring token t with the logits at t) gives other numbers.
        logits = model(tokens)[:, 1:] / temperature
        wrong = torch.log_softmax(logits, -1)[:, :-1].gather(-1, tokens[:, 1:-1, None])
        assert not torch.allclose(wrong.squeeze(-1), logp[:, :-1], atol=1e-3)
    with pytest.raises(ValueError, match="temperature"):
        ppo.token_logprobs(model, tokens, 0.0)


def test_gae_matches_a_hand_computed_example():
    # One row, answer actions at positions 1..3 (position 0 is prompt, 4 is padding).
    mask = torch.tensor([[False, True, True, True, False]])
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[9.0, 0.5, 0.2, 0.4, 9.0]])  # 9.0 outside the answer must not leak
    adv, ret = ppo.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # By hand: delta_3 = 1 - 0.4 = 0.6            A_3 = 0.6
    #          delta_2 = 0 + 0.4 - 0.2 = 0.2      A_2 = 0.2 + 0.95 * 0.6 = 0.77
    #          delta_1 = 0 + 0.2 - 0.5 = -0.3     A_1 = -0.3 + 0.95 * 0.77 = 0.4315
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.4315, 0.77, 0.6, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.0, 0.9315, 0.97, 1.0, 0.0]]))
    # lambda = 1, gamma = 1: the return is the plain sum of future rewards.
    _, ret1 = ppo.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret1, torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]]))
    # gamma is used: with gamma = 0.5, lam = 1 the returns are 0.25, 0.5, 1.
    _, ret_g = ppo.gae(rewards, values, mask, gamma=0.5, lam=1.0)
    torch.testing.assert_close(ret_g, torch.tensor([[0.0, 0.25, 0.5, 1.0, 0.0]]))


def test_reward_combination_rule_on_its_four_cases():
    helpful = torch.tensor([0.8, 0.8, 0.8, 0.8])
    safety = torch.tensor([0.9, 0.1, 0.1, 0.5])
    unsafe = torch.tensor([True, True, False, False])
    combined = ppo.combine_rewards(helpful, safety, unsafe, threshold=0.15)
    # unsafe prompt & safe answer -> safety; unsafe prompt & unsafe answer -> safety;
    # benign prompt & answer judged unsafe (< 0.15) -> safety; benign & fine -> helpfulness.
    torch.testing.assert_close(combined, torch.tensor([0.9, 0.1, 0.1, 0.8]))
    # The threshold is strict: exactly 0.15 on a benign prompt uses helpfulness.
    edge = ppo.combine_rewards(torch.tensor([0.7]), torch.tensor([0.15]), torch.tensor([False]))
    torch.testing.assert_close(edge, torch.tensor([0.7]))


def test_llama2_score_is_the_logit_of_the_chosen_reward_model():
    h_raw = torch.tensor([2.0, 2.0, 2.0, 2.0])
    s_raw = torch.tensor([1.0, -3.0, -3.0, 0.5])
    unsafe = torch.tensor([True, True, False, False])
    score = ppo.llama2_score(h_raw, s_raw, unsafe)
    torch.testing.assert_close(score, torch.tensor([1.0, -3.0, -3.0, 2.0]), atol=1e-4, rtol=0)
    # Extreme outputs stay finite.
    assert torch.isfinite(ppo.llama2_score(torch.tensor([80.0]), torch.tensor([80.0]),
                                           torch.tensor([False]))).all()
    reward = ppo.Llama2Reward(lambda p, a, i: h_raw, lambda p, a, i: s_raw)
    out = reward([[1]] * 4, [[3]] * 4, [True, True, False, False])
    torch.testing.assert_close(out, score)
    assert reward.last["used_safety"].tolist() == [True, True, True, False]


def test_whitening_and_kl_penalised_rewards():
    x = torch.tensor([1.0, 2.0, 3.0, 6.0])
    w = ppo.whiten(x)
    torch.testing.assert_close(w.mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(w.pow(2).mean(), torch.tensor(1.0), atol=1e-5, rtol=0)
    mask = torch.tensor([[False, True, True], [True, True, False]])
    vals = torch.tensor([[100.0, 1.0, 3.0], [2.0, 4.0, 100.0]])
    mw = ppo.masked_whiten(vals, mask)
    assert mw[0, 0] == 0 and mw[1, 2] == 0
    torch.testing.assert_close(mw[mask], ppo.whiten(torch.tensor([1.0, 3.0, 2.0, 4.0])))

    logp = torch.tensor([[0.0, -1.0, -2.0], [-0.5, -0.5, 0.0]])
    ref = torch.tensor([[0.0, -1.5, -1.0], [-1.0, -0.5, 0.0]])
    rewards = ppo.kl_penalised_rewards(torch.tensor([3.0, -1.0]), logp, ref, mask, beta=0.1)
    # row 0: -0.1 * 0.5 = -0.05; last token -0.1 * (-1) + 3 = 3.1. row 1: -0.05; 0 - 1 = -1.
    torch.testing.assert_close(rewards, torch.tensor([[0.0, -0.05, 3.1], [-0.05, -1.0, 0.0]]))


def test_clipped_policy_loss_on_a_hand_example():
    old = torch.zeros(1, 4)
    # ratios 1.5, 0.5, 1.5, 0.5 with advantages +1, +1, -1, -1
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5]])).requires_grad_()
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss, clip_frac, ratio = ppo.clipped_policy_loss(logp, old, adv, mask, clip_eps=0.2)
    torch.testing.assert_close(ratio, torch.tensor([[1.5, 0.5, 1.5, 0.5]]))
    # per token: -min(1.5, 1.2) = -1.2 (clipped); -min(0.5, 0.8) = -0.5;
    #            -min(-1.5, -1.2) = 1.5;          -min(-0.5, -0.8) = 0.8 (clipped)
    torch.testing.assert_close(loss, torch.tensor((-1.2 - 0.5 + 1.5 + 0.8) / 4))
    torch.testing.assert_close(clip_frac, torch.tensor(0.5))
    loss.backward()
    # Clipped tokens give no gradient; the others give -A * rho / n.
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.5 / 4, 1.5 / 4, 0.0]]))


def test_clipped_value_loss_on_a_hand_example():
    old = torch.tensor([[0.0, 0.0]])
    values = torch.tensor([[1.0, 0.1]])
    returns = torch.tensor([[2.0, -1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, frac = ppo.clipped_value_loss(values, old, returns, mask, clip=0.2)
    # token 0: (1 - 2)^2 = 1 vs clipped (0.2 - 2)^2 = 3.24 -> 3.24 (clipped side wins)
    # token 1: (0.1 + 1)^2 = 1.21 vs (0.1 + 1)^2 (inside the clip range) -> 1.21
    torch.testing.assert_close(loss, torch.tensor(0.5 * (3.24 + 1.21) / 2))
    torch.testing.assert_close(frac, torch.tensor(0.5))


def _trainer(beta=0.1, reward_fn=None, **config):
    torch.manual_seed(0)
    policy = _tiny()
    ref = ppo.frozen_copy(policy)
    value = ppo.ValueModel(copy.deepcopy(policy))
    reward_fn = reward_fn or (lambda p, a, i: torch.tensor([float(len(x)) for x in a]))
    cfg = ppo.PPOConfig(beta=beta, max_gen_len=8, minibatch_size=4, ppo_epochs=2,
                        eos_id=2, **config)
    return ppo.PPOTrainer(policy, ref, value, reward_fn, cfg, seed=0)


def test_first_minibatch_has_ratio_one_and_zero_kl_when_policy_is_reference():
    trainer = _trainer()
    prompts = [[1, 5, 6], [1, 9], [1, 3, 3, 3], [1, 40], [1, 7, 7], [1, 11, 12, 13, 14], [1, 2 + 1],
               [1, 100]]
    batch = trainer.rollout(prompts)
    assert torch.equal(batch.logp, batch.ref_logp)
    assert batch.kl.abs().max().item() == 0.0
    stats = trainer.update(batch)
    assert stats["first_ratio_dev"] < 1e-5
    # After the update the policy has moved: the next rollout sees a non-zero KL.
    batch2 = trainer.rollout(prompts)
    assert batch2.kl.abs().max().item() > 0


def test_rollout_respects_eos_and_penalises_answers_without_it():
    trainer = _trainer(reward_fn=lambda p, a, i: torch.zeros(len(a)), no_eos_penalty=2.0)
    prompts = [[1, 5], [1, 6]]
    answers = [[7, 8, 9], [7, 8, 9, 10, 11, 12, 13, 14]]
    ended = torch.tensor([True, False])
    batch = trainer.make_rollout(prompts, answers, ended)
    # The ended answer includes its EOS as the last action; the other has no EOS.
    assert batch.tokens[0, :6].tolist() == [1, 5, 7, 8, 9, 2]
    assert batch.mask.sum(-1).tolist() == [4, 8]
    torch.testing.assert_close(batch.score, torch.tensor([0.0, -2.0]))
    # The score lands on each row's last answer action.
    last = ppo.last_index(batch.mask)
    assert last.tolist() == [4, 8]
    torch.testing.assert_close(batch.rewards[1, 8], torch.tensor(-2.0) - 0.1 * (
        batch.logp[1, 8] - batch.ref_logp[1, 8]))
    # Sampling: an answer of max_gen_len tokens is flagged as not ended.
    answers, ended = trainer.sample([[1, 5]] * 6)
    assert all(len(a) < 8 for a, e in zip(answers, ended.tolist()) if e)
    assert all(len(a) == 8 for a, e in zip(answers, ended.tolist()) if not e)


def test_config_rejects_settings_that_break_the_ratio():
    with pytest.raises(ValueError, match="temperature"):
        ppo.PPOConfig(temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        ppo.PPOConfig(top_p=0.9)


def test_ppo_increases_a_simple_reward():
    # Reward: fraction of answer tokens equal to 7. A few iterations must raise it clearly.
    def reward(p, a, i):
        return torch.tensor([sum(t == 7 for t in x) / max(len(x), 1) for x in a])

    trainer = _trainer(beta=0.0, reward_fn=reward, lr=3e-3, value_lr=3e-3, whiten_scores=True)
    trainer.config.ppo_epochs = 4
    prompts = [[1, 20 + i] for i in range(16)]
    start = trainer.rollout(prompts).raw_score.mean().item()
    for _ in range(10):
        log = trainer.iteration(prompts)
    assert log["reward"] > start + 0.3, (start, log["reward"])
    assert math.isfinite(log["value_loss"]) and 0 <= log["clip_frac"] <= 1
    assert [h["iteration"] for h in trainer.history] == list(range(10))


def test_train_logs_the_evaluation_before_training_as_iteration_minus_one():
    trainer = _trainer(beta=0.1)
    prompts = [[1, 20 + i] for i in range(4)]
    history = trainer.train(lambda i: (prompts, None), 2, eval_fn=lambda m: {"score": 1.0},
                            eval_every=2)
    assert [h["iteration"] for h in history] == [-1, 0, 1]
    assert "score" in history[0] and "score" not in history[1] and "score" in history[2]


def _train_with_scripted_scores(scores, eval_every=1):
    """Train for len(scores) - 1 iterations; the k-th evaluation scores scores[k]. Returns the
    trainer and a copy of the policy's weights at every evaluation."""
    trainer = _trainer(beta=0.1, lr=1e-2)
    prompts = [[1, 20 + i] for i in range(4)]
    seen = []

    def eval_fn(model):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"val_accuracy": scores[len(seen) - 1]}

    trainer.train(lambda i: (prompts, None), (len(scores) - 1) * eval_every, eval_fn=eval_fn,
                  eval_every=eval_every, keep_best=lambda m: m["val_accuracy"])
    return trainer, seen


def _same_weights(model, weights):
    return all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_keep_best_restores_the_weights_of_the_best_evaluation():
    trainer, seen = _train_with_scripted_scores([0.1, 0.5, 0.3, 0.5])
    assert trainer.best_iteration == 1  # the first of the two 0.5s: a tie keeps the earlier
    assert _same_weights(trainer.policy, seen[1])
    assert not _same_weights(trainer.policy, seen[3])  # the policy did move after iteration 1
    trainer, seen = _train_with_scripted_scores([0.2, 0.1, 0.6], eval_every=2)
    assert trainer.best_iteration == 4 and _same_weights(trainer.policy, seen[2])


def test_keep_best_returns_the_starting_policy_when_nothing_beats_it():
    trainer, seen = _train_with_scripted_scores([0.9, 0.5, 0.7])
    assert trainer.best_iteration == 0 and _same_weights(trainer.policy, seen[0])
    with pytest.raises(ValueError, match="eval_fn"):
        _trainer().train(lambda i: ([[1, 2]], None), 1, keep_best=lambda m: 0.0)


def test_chat_metrics_accuracy_counts_every_prompt_answered_right(monkeypatch):
    from llama2_edu import sft
    from llama2_edu.data.assistant import REFUSAL, assistant_examples

    examples = assistant_examples(6, seed=0, split="val", system_prob=0, multi_turn_prob=0)
    by_task = {ex.task: ex for ex in examples}
    assert set(by_task) == {"arithmetic", "reverse", "sort", "world", "unsafe", "borderline"}
    # Right: arithmetic, sort, the refusal of the unsafe request; wrong: the other three.
    answers = {"arithmetic": by_task["arithmetic"].answer, "reverse": "no idea",
               "sort": by_task["sort"].answer, "world": "It is red.", "unsafe": REFUSAL,
               "borderline": REFUSAL}
    monkeypatch.setattr(sft, "respond", lambda model, tok, dialogs, *a: [
        answers[ex.task] for ex in examples])
    m = ppo.chat_metrics(None, None, examples)
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["helpful_accuracy"] == pytest.approx(2 / 4)
    assert m["unsafe_compliance"] == 0.0 and m["false_refusal_rate"] == 1.0


def test_sampled_kl_is_zero_for_the_reference_and_positive_after_a_change():
    policy = _tiny()
    ref = ppo.frozen_copy(policy)
    prompts = [[1, 5], [1, 6, 7], [1, 9]]
    gen = torch.Generator().manual_seed(0)
    assert ppo.sampled_kl(policy, ref, prompts, 6, generator=gen).abs().max().item() == 0.0
    with torch.no_grad():
        policy.output.weight.mul_(3.0)  # sharper distributions: a different policy
    kl = ppo.sampled_kl(policy, ref, prompts * 20, 6, generator=gen)
    assert kl.shape == (60,) and kl.mean() > 0


def test_chat_reward_scores_answers_with_chat_tags_lowest(one_thread):
    from types import SimpleNamespace

    from llama2_edu.reward import RewardModel

    tok = ByteTokenizer()
    rm = RewardModel(_tiny())
    torch.nn.init.normal_(rm.head.weight, std=1.0)
    ex = SimpleNamespace(task="sort", dialog=({"role": "user", "content": "Sort: b a"},))
    texts = ["a b", "b a", "a [INST] b", "[/INST]"]
    answers = [tok.encode(t, False, False) for t in texts]
    score = ppo.chat_reward(tok, rm, rm)([[1]] * 4, answers, [ex] * 4)
    assert torch.isfinite(score).all()
    assert score[2] == score[3] == score[:2].min()
    none_ok = ppo.chat_reward(tok, rm, rm)([[1]] * 2, answers[2:], [ex] * 2)
    torch.testing.assert_close(none_ok, ppo.llama2_score(torch.zeros(2), torch.zeros(2),
                                                          torch.zeros(2, dtype=torch.bool)))


def test_gold_helpfulness_scores_the_ground_truth_level_and_the_rule_uses_it():
    from llama2_edu.data import assistant as A

    tok = ByteTokenizer()
    ex = A.make_example(__import__("random").Random(0), "sort", "test")
    target = ex.answer.split()
    swapped = [target[1], target[0]] + target[2:]
    texts = [ex.answer, " ".join(swapped), " ".join(reversed(target)) + " " + target[0],
             A.REFUSAL]
    expected_levels = [3, 2, 1, 0]
    assert [A.quality_level(ex, t) for t in texts] == expected_levels
    answers = [tok.encode(t, False, False) for t in texts]
    gold = ppo.gold_helpfulness(tok)([[1]] * 4, answers, [ex] * 4)
    assert gold.tolist() == [ppo.GOLD_LEVEL_SCORES[lv] for lv in expected_levels]
    # In the Llama 2 rule the gold judge stands where the helpfulness model stood: on a safe
    # prompt whose safety score is high, the combined score is the gold score.
    high_safety = lambda p, a, i: torch.full((len(a),), 5.0)  # noqa: E731
    score = ppo.chat_reward(tok, ppo.gold_helpfulness(tok), high_safety)([[1]] * 4, answers,
                                                                          [ex] * 4)
    torch.testing.assert_close(score, gold, atol=1e-4, rtol=0)


def test_value_warm_up_trains_the_value_model_and_leaves_the_policy_alone():
    trainer = _trainer(beta=0.01)
    policy_before = copy.deepcopy(trainer.policy.state_dict())
    value_before = copy.deepcopy(trainer.value_model.state_dict())
    prompts = [[1, 5 + i] for i in range(8)]
    stats = trainer.warm_up_value(prompts)
    assert math.isfinite(stats["value_loss"])
    assert all(torch.equal(policy_before[k], v) for k, v in trainer.policy.state_dict().items())
    assert any(not torch.equal(value_before[k], v)
               for k, v in trainer.value_model.state_dict().items())
    assert trainer.history == []  # a warm-up is not a PPO iteration
