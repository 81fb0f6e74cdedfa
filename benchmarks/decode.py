"""Greedy decoding speed: llama2_edu against transformers' `generate`, same weights, one run.

    python benchmarks/decode.py            # stories15M shape, fp32, 2 threads, 256 new tokens

Prints tokens/s for both at batch 1 and the ratio, then llama2_edu's throughput at batch 8
and 32. Both sides decode greedily with a KV cache from the same one-token prompt; we check
that they produce the same tokens, so the race is between equal computations.
"""

from __future__ import annotations

import argparse
import time

import torch

import llama2_edu as L
from llama2_edu.checkpoint import hf_config, meta_to_hf
from llama2_edu.cpu_layout import relayout_for_decoding


def tokens_per_second(fn, n_tokens: int, repeats: int) -> tuple[float, list]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return n_tokens / best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="stories15m")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="*", default=[8, 32])
    opts = parser.parse_args()

    torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    args = L.ModelArgs.preset(opts.preset, max_seq_len=opts.new_tokens + 1)
    model = L.Transformer(args).eval()
    prompt = [[1]]
    n = opts.new_tokens

    def ours(batch: int = 1):
        return L.generate(model, prompt * batch, n, temperature=0.0, eos_id=None)

    ours()  # warm-up
    plain_tps, plain_tokens = tokens_per_second(ours, n, opts.repeats)
    relayout_for_decoding(model)  # same values, weights stored the way CPU BLAS streams them
    ours()
    ours_tps, ours_tokens = tokens_per_second(ours, n, opts.repeats)
    assert ours_tokens == plain_tokens, "the relayout changed the generated tokens"

    from transformers import LlamaForCausalLM
    hf = LlamaForCausalLM(hf_config(args, bos_token_id=1, eos_token_id=None)).eval()
    hf.load_state_dict(meta_to_hf(model.state_dict(), args))  # copies into HF's own layout
    ids = torch.tensor(prompt)

    def theirs():
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
        return out[0, 1:].tolist()

    theirs()
    hf_tps, hf_tokens = tokens_per_second(theirs, n, opts.repeats)
    same = ours_tokens[0] == hf_tokens
    print(f"shape {opts.preset}: dim {args.dim}, {args.n_layers} layers, {args.n_heads} heads, "
          f"FFN {args.hidden_dim}, vocab {args.vocab_size}; fp32, {opts.threads} threads, "
          f"{n} new tokens, greedy")
    print(f"batch 1  llama2_edu   {ours_tps:8.1f} tok/s "
          f"(default layout: {plain_tps:.1f} tok/s; see llama2_edu/cpu_layout.py)")
    print(f"batch 1  transformers {hf_tps:8.1f} tok/s")
    print(f"ratio llama2_edu / transformers: {ours_tps / hf_tps:.2f}x "
          f"(same {n} tokens: {same})")
    for batch in opts.batches:
        tps, _ = tokens_per_second(lambda: ours(batch), n * batch, 1)
        print(f"batch {batch:<3d} llama2_edu   {tps:8.1f} tok/s (all rows together)")


if __name__ == "__main__":
    main()
