import math

import pytest
import torch
from conftest import tiny_model as _tiny

from llama2_edu import dpo, ppo

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dpo_loss_matches_a_hand_computed_value():
    # margin = (-1 - (-2)) - (-3 - (-2.5)) = 1 + 0.5 = 1.5; beta * margin = 0.75
    loss, chosen, rejected = dpo.dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]),
                                          torch.tensor([-2.0]), torch.tensor([-2.5]), beta=0.5)
    torch.testing.assert_close(loss, torch.tensor(math.log(1 + math.exp(-0.75))))
    torch.testing.assert_close(chosen, torch.tensor([0.5]))
    torch.testing.assert_close(rejected, torch.tensor([-0.25]))
    # Policy == reference: every implicit reward is 0 and the loss is log 2.
    same = torch.tensor([-4.0, -7.0])
    loss0, *_ = dpo.dpo_loss(same, same + 1, same, same + 1, beta=0.1)
    torch.testing.assert_close(loss0, torch.tensor(math.log(2.0)))
    with pytest.raises(ValueError, match="beta"):
        dpo.dpo_loss(same, same, same, same, beta=0.0)


def test_dpo_gradient_pushes_chosen_up_and_rejected_down():
    pc = torch.tensor([-2.0], requires_grad=True)
    pr = torch.tensor([-2.0], requires_grad=True)
    loss, *_ = dpo.dpo_loss(pc, pr, torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.1)
    loss.backward()
    # d/d logp_c = -beta * sigmoid(-0) = -0.05; the rejected gets the opposite sign.
    torch.testing.assert_close(pc.grad, torch.tensor([-0.05]))
    torch.testing.assert_close(pr.grad, torch.tensor([0.05]))


def test_sequence_logprobs_sum_answer_tokens_only():
    model = _tiny()
    prompts, answers = [[1, 5, 6], [1, 9]], [[7, 8, 2], [3, 2]]
    got = dpo.sequence_logprobs(model, prompts, answers)
    with torch.no_grad():
        for row, (p, a) in enumerate(zip(prompts, answers)):
            seq = torch.tensor([p + a])
            logp = torch.log_softmax(model(seq)[0], -1)
            expected = sum(logp[len(p) - 1 + i, tok] for i, tok in enumerate(a))
            torch.testing.assert_close(got[row], expected, atol=1e-5, rtol=1e-5)


def test_train_dpo_raises_the_margin_and_keeps_the_reference_frozen():
    policy, ref = _tiny(), ppo.frozen_copy(_tiny())
    gen = torch.Generator().manual_seed(0)
    pairs = []
    for i in range(16):
        prompt = [1, 10 + i]
        tail = torch.randint(20, 120, (3,), generator=gen).tolist()
        pairs.append((prompt, [7, 7] + tail + [2], [9, 9] + tail + [2]))
    ref_before = {k: v.clone() for k, v in ref.state_dict().items()}
    history = dpo.train_dpo(policy, ref, pairs,
                            dpo.DPOConfig(beta=0.1, lr=1e-3, epochs=4, batch_size=8))
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == ref at start
    assert history[-1]["loss"] < 0.6
    assert history[-1]["reward_accuracy"] == 1.0 and history[-1]["margin"] > 0
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in ref_before.items())
