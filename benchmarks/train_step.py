"""Training speed: llama2_edu against transformers' LlamaForCausalLM, same weights, one run.

    python benchmarks/train_step.py        # the toy preset, batch 8 x 256 tokens, fp32, 2 threads

A training step is forward, next-token cross-entropy, backward and an AdamW step, on the same
batch and from the same weights for both sides (transformers' model is built from
`llama2_edu.checkpoint.hf_config` and loaded with our weights). We check that the first-step
losses agree, so both sides compute the same thing, then time the steps in alternation (so a
busy machine slows both alike) and print tokens/s for each and the ratio. transformers runs
with its SDPA attention (its fastest on CPU); `--hf-attention eager` times its default eager
path instead.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import llama2_edu as L
from llama2_edu.checkpoint import hf_config, meta_to_hf
from llama2_edu.train import TrainConfig, loss_fn, make_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="toy")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--hf-attention", default="sdpa", choices=["sdpa", "eager"])
    opts = parser.parse_args()

    torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    args = L.ModelArgs.preset(opts.preset, max_seq_len=max(opts.seq_len, 2))
    ours = L.Transformer(args)

    from transformers import LlamaForCausalLM
    theirs = LlamaForCausalLM(hf_config(args))
    theirs.load_state_dict(meta_to_hf(ours.state_dict(), args), strict=True)
    theirs.set_attn_implementation(opts.hf_attention)
    ours.train(), theirs.train()

    config = TrainConfig()
    opt_ours, opt_theirs = make_optimizer(ours, config), make_optimizer(theirs, config)
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, args.vocab_size, (opts.batch_size, opts.seq_len + 1), generator=g)
    inputs, targets = batch[:, :-1], batch[:, 1:]

    def step_ours() -> float:
        loss = loss_fn(ours(inputs), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)
        return float(loss.detach())

    def step_theirs() -> float:
        loss = loss_fn(theirs(input_ids=inputs).logits, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)
        return float(loss.detach())

    first_ours, first_theirs = step_ours(), step_theirs()
    if abs(first_ours - first_theirs) > 1e-4:
        raise SystemExit(f"the two models disagree: first-step loss {first_ours:.6f} (ours) vs "
                         f"{first_theirs:.6f} (transformers)")
    for _ in range(opts.warmup - 1):
        step_ours(), step_theirs()

    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for _ in range(opts.steps):  # alternate, so that load on the machine hits both sides
        for name, fn in (("ours", step_ours), ("theirs", step_theirs)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    tokens = opts.batch_size * opts.seq_len
    tps = {k: tokens / statistics.median(v) for k, v in times.items()}
    print(f"shape {opts.preset}: dim {args.dim}, {args.n_layers} layers, {args.n_heads} heads "
          f"({args.kv_heads} KV), FFN {args.hidden_dim}, vocab {args.vocab_size}; batch "
          f"{opts.batch_size} x {opts.seq_len} tokens; fp32, {opts.threads} threads; "
          f"forward + backward + AdamW, median of {opts.steps} steps")
    print(f"first-step loss: llama2_edu {first_ours:.5f}, transformers {first_theirs:.5f}")
    print(f"llama2_edu                    {tps['ours']:9.0f} tokens/s")
    print(f"transformers ({opts.hf_attention:5s})          {tps['theirs']:9.0f} tokens/s")
    print(f"ratio llama2_edu / transformers: {tps['ours'] / tps['theirs']:.2f}x")


if __name__ == "__main__":
    main()
