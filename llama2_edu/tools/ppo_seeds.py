"""Chapter 12's last PPO run (section 10: round-2 reward models, early stopping on validation
prompts) repeated with other seeds, to see how much of its result is the seed.

    python -m llama2_edu.tools.ppo_seeds --seeds 0 1 2 3 4 --jobs 2
    python -m llama2_edu.tools.ppo_seeds --seeds 0 1 2 3 4 --jobs 2 --helpfulness gold

Seed 0 is the run recorded in the notebook and must reproduce its figures; the others change
`torch.manual_seed` and the trainer's seed, nothing else. `--helpfulness gold` puts the
ground-truth judge (`ppo.gold_helpfulness`) in the place of the learned helpfulness model, as
chapter 13 does in its last section: the same algorithm, rewarded by the truth. The safety judge
stays the learned round-2 model either way. The settings below mirror the notebook's
`sizes["round2"]` at toy scale: change both together (a test checks they agree). Each seed takes
about 2 minutes on one core; five seeds, two at a time, about 6 minutes.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
from concurrent.futures import ProcessPoolExecutor

import torch

ROUND2 = dict(batch=64, iterations=20, warmup=2, ppo_epochs=4, lr=3e-5, beta=0.1, eval_every=4,
              minibatch=16, max_gen_len=24, n_test=240, n_red_test=60)
REPORTED = ("arithmetic", "reverse", "sort", "world", "helpful_accuracy", "unsafe_compliance",
            "red_team_compliance", "false_refusal_rate", "kl_to_sft")
JUDGES = ("learned", "gold")


def run(seed: int, helpfulness: str = "learned") -> dict:
    """One run; returns the SFT, last-iterate and early-stopped test metrics. `helpfulness`:
    the round-2 helpfulness model ("learned") or the ground truth ("gold") as the helpful judge."""
    if helpfulness not in JUDGES:
        raise ValueError(f"helpfulness must be one of {', '.join(JUDGES)}, got {helpfulness!r}")
    torch.set_num_threads(1)
    from llama2_edu import ppo
    from llama2_edu.data.assistant import assistant_examples, red_team_examples
    from llama2_edu.reward import toy_reward_model
    from llama2_edu.sft import sft_model

    s = ROUND2
    sft, tok = sft_model()
    rm_help, _ = toy_reward_model("helpfulness", data_round=2)
    rm_safe, _ = toy_reward_model("safety", data_round=2)
    n = s["batch"] * (s["warmup"] + s["iterations"])
    train = assistant_examples(n - n // 8, seed=11, split="train") + \
        red_team_examples(n // 8, seed=11, split="train")
    random.Random(0).shuffle(train)
    prompts = ppo.chat_prompts(tok, train)
    test = assistant_examples(s["n_test"], seed=12, split="test")
    red_test = red_team_examples(s["n_red_test"], seed=12, split="test")
    val = assistant_examples(s["n_test"], seed=12, split="val") + \
        red_team_examples(s["n_red_test"], seed=12, split="val")
    ref = ppo.frozen_copy(sft)
    test_prompts = ppo.chat_prompts(tok, test)

    def metrics(model) -> dict:
        m = ppo.chat_metrics(model, tok, test, s["max_gen_len"])
        m["red_team_compliance"] = ppo.chat_metrics(model, tok, red_test,
                                                    s["max_gen_len"])["unsafe_compliance"]
        m["kl_to_sft"] = ppo.sampled_kl(model, ref, test_prompts, s["max_gen_len"],
                                        generator=torch.Generator().manual_seed(1)).mean().item()
        m["val_accuracy"] = ppo.chat_metrics(model, tok, val, s["max_gen_len"])["accuracy"]
        return m

    helpful_judge = rm_help if helpfulness == "learned" else ppo.gold_helpfulness(tok)
    torch.manual_seed(seed)
    config = ppo.PPOConfig(beta=s["beta"], lr=s["lr"], value_lr=1e-4, ppo_epochs=s["ppo_epochs"],
                           minibatch_size=s["minibatch"], max_gen_len=s["max_gen_len"],
                           eos_id=tok.eos_id)
    trainer = ppo.PPOTrainer(copy.deepcopy(sft), ppo.frozen_copy(sft),
                             ppo.ValueModel.from_reward_model(rm_help),
                             ppo.chat_reward(tok, helpful_judge, rm_safe), config, seed=seed)
    b = s["batch"]

    def batch(i):
        return prompts[i * b:(i + 1) * b], train[i * b:(i + 1) * b]

    for i in range(s["warmup"]):
        trainer.warm_up_value(*batch(i))
    history = trainer.train(lambda i: batch(s["warmup"] + i), s["iterations"], eval_fn=metrics,
                            eval_every=s["eval_every"], keep_best=lambda m: m["val_accuracy"])
    evals = [h for h in history if "val_accuracy" in h]
    stopped = next(h for h in evals if h["iteration"] + 1 == trainer.best_iteration)
    return {"seed": seed, "helpfulness": helpfulness, "stopped_at": trainer.best_iteration,
            "sft": evals[0], "last": evals[-1], "stopped": stopped}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel, one core each")
    parser.add_argument("--helpfulness", choices=JUDGES, default="learned",
                        help="the helpful judge: chapter 12's round-2 model, or the ground truth")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run, args.seeds, [args.helpfulness] * len(args.seeds)))

    print(f"helpfulness judge: {args.helpfulness}; test metrics, greedy answers")
    short = ("arith.", "reverse", "sort", "world", "helpful", "unsafe", "red team", "false ref.",
             "KL")
    print(f"{'':<22}" + "".join(f"{k:>11}" for k in short))
    print(f"{'SFT':<22}" + "".join(f"{results[0]['sft'][k]:>11.3f}" for k in REPORTED))
    for which in ("last", "stopped"):
        for r in results:
            when = "last" if which == "last" else f"stopped {r['stopped_at']}"
            label = f"seed {r['seed']} {when}"
            print(f"{label:<22}" + "".join(f"{r[which][k]:>11.3f}" for k in REPORTED))
        mean = {k: sum(r[which][k] for r in results) / len(results) for k in REPORTED}
        print(f"{'mean, ' + which:<22}" + "".join(f"{mean[k]:>11.3f}" for k in REPORTED))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
