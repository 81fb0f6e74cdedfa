"""Text generation: greedy, temperature and top-p (nucleus) sampling with a KV cache.

Batched prompts of different lengths follow Meta's reference (llama/generation.py): all rows
are left-aligned in one token grid; decoding starts at the shortest prompt's end, and wherever
a row still has prompt tokens the prompt token overrides the sampled one. Every row therefore
sees exactly what it would see alone.
"""

from __future__ import annotations

from typing import Callable

import torch

from .model import Transformer


def top_p_filter(probs: torch.Tensor, p: float) -> torch.Tensor:
    """Zero the tail of each distribution and renormalise, Meta's way: sort descending and keep
    every token whose preceding cumulative mass is <= p, so the token that crosses p is kept.
    E.g. [0.5, 0.3, 0.2] keeps 2 tokens at p=0.6 and 1 token at p=0.4."""
    check_sampling(temperature=1.0, top_p=p)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before > p, 0.0)
    filtered = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return filtered / filtered.sum(dim=-1, keepdim=True)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of `logits` (batch, vocab). temperature 0 means greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        probs = top_p_filter(probs, top_p)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def check_sampling(temperature: float, top_p: float) -> None:
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")


@torch.inference_mode()
def generate(
    model: Transformer,
    prompt_tokens: list[list[int]],
    max_gen_len: int,
    temperature: float = 0.6,
    top_p: float = 0.9,
    eos_id: int | None = 2,
    generator: torch.Generator | None = None,
    on_token: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
    """Continue each prompt by up to `max_gen_len` tokens; return only the new tokens.

    A row stops after it emits `eos_id` (the EOS itself is not returned). `on_token(row, id)`
    is called for every new token (EOS excepted) as soon as it exists, for streaming. Pass a seeded
    `torch.Generator` for reproducible sampling. Defaults are Meta's (0.6, 0.9)."""
    check_sampling(temperature, top_p)
    if max_gen_len < 1:
        raise ValueError(f"max_gen_len must be >= 1, got {max_gen_len}")
    if not prompt_tokens or any(len(p) == 0 for p in prompt_tokens):
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    limit = model.args.max_seq_len
    longest = max(len(p) for p in prompt_tokens)
    if longest + max_gen_len > limit:
        raise ValueError(f"prompt length {longest} + max_gen_len {max_gen_len} = "
                         f"{longest + max_gen_len} exceeds max_seq_len {limit}")

    device = model.output.weight.device
    batch, total_len = len(prompt_tokens), longest + max_gen_len
    tokens = torch.zeros((batch, total_len), dtype=torch.long, device=device)
    is_prompt = torch.zeros((batch, total_len), dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompt_tokens):
        tokens[row, :len(prompt)] = torch.tensor(prompt, dtype=torch.long, device=device)
        is_prompt[row, :len(prompt)] = True
    prompt_lens = [len(p) for p in prompt_tokens]

    cache = model.new_cache(batch, total_len)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    prev_pos = 0
    for cur_pos in range(min(prompt_lens), total_len):
        # The first step prefills the shared prompt prefix in one forward; later steps feed one
        # token each, reading everything before it from the cache.
        logits = model(tokens[:, prev_pos:cur_pos], start_pos=prev_pos, cache=cache,
                       last_only=True)[:, -1]
        next_token = sample_next(logits, temperature, top_p, generator)
        next_token = torch.where(is_prompt[:, cur_pos], tokens[:, cur_pos], next_token)
        tokens[:, cur_pos] = next_token
        generated = ~is_prompt[:, cur_pos] & ~finished
        hit_eos = generated & (next_token == eos_id) if eos_id is not None else None
        if on_token is not None:
            shown = generated if hit_eos is None else generated & ~hit_eos
            for row in shown.nonzero().flatten().tolist():
                on_token(row, int(next_token[row]))
        if hit_eos is not None:
            finished |= hit_eos
            if bool(finished.all()):
                break
        prev_pos = cur_pos

    out = []
    for row, n_prompt in enumerate(prompt_lens):
        new = tokens[row, n_prompt:n_prompt + max_gen_len].tolist()
        new = new[:max(0, cur_pos + 1 - n_prompt)]  # drop grid cells never reached
        if eos_id is not None and eos_id in new:
            new = new[:new.index(eos_id)]
        out.append(new)
    return out
