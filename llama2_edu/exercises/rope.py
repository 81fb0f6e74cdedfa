"""Chapter 02: rotary position embeddings in Meta's interleaved layout, and undoing the
Hugging Face permutation of wq/wk ("fix the gibberish")."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..checkpoint import hf_to_meta_name, meta_to_hf, permute_for_hf, unpermute_from_hf
from ..config import ModelArgs
from ..model import Transformer, apply_rope, precompute_rope
from ._harness import call_learner, compare, passed


def reference_rope(x: torch.Tensor, start_pos: int = 0, theta: float = 10000.0) -> torch.Tensor:
    """The library's RoPE for x (batch, seq, heads, head_dim) at positions start_pos, ..."""
    seq_len, head_dim = x.shape[1], x.shape[-1]
    rotations = precompute_rope(head_dim, start_pos + seq_len, theta)
    return apply_rope(x, rotations[start_pos:])


def _rope(x, positions, inv_freq, *, layout="meta", sign=1.0):
    angles = positions.float()[:, None] * inv_freq[None, :]  # (seq, head_dim/2)
    cos, sin = angles.cos()[:, None, :], sign * angles.sin()[:, None, :]
    x = x.float()
    if layout == "meta":  # pairs (0,1), (2,3), ...
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), -1).flatten(-2)
    half = x.shape[-1] // 2  # Hugging Face: pairs (i, i + head_dim/2)
    x0, x1 = x[..., :half], x[..., half:]
    return torch.cat((x0 * cos - x1 * sin, x0 * sin + x1 * cos), -1)


def _rope_diagnose(x, start_pos, theta):
    seq_len, head_dim = x.shape[1], x.shape[-1]
    pos = torch.arange(start_pos, start_pos + seq_len)
    i = torch.arange(0, head_dim, 2).float()
    good = theta ** (-i / head_dim)
    variants = {
        "Meta pairs *adjacent* features (x0, x1), (x2, x3), ...; you paired feature i with "
        "i + head_dim/2 (Hugging Face's rotate_half layout)": _rope(x, pos, good, layout="hf"),
        "the frequency of pair i is theta^(-2i/head_dim) for i = 0 .. head_dim/2 - 1; you used "
        "exponent -i/head_dim": _rope(x, pos, theta ** (-(i / 2) / head_dim)),
        "the frequencies decrease: theta^(-2i/head_dim), with a minus sign in the exponent":
            _rope(x, pos, theta ** (i / head_dim)),
        "positions are off by one: the first token of the chunk sits at position start_pos":
            _rope(x, pos + 1, good),
        "positions are off by one: the first token of the chunk sits at position start_pos, "
        "not start_pos - 1": _rope(x, pos - 1, good),
        "positions start at start_pos, not at 0 (a chunk decoded after a cache has an offset)":
            _rope(x, pos - start_pos, good),
        "the sine has the wrong sign: (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos)":
            _rope(x, pos, good, sign=-1.0),
    }

    def diagnose(got):
        for hint, wrong in variants.items():
            if torch.allclose(got.float(), wrong, atol=1e-4, rtol=1e-4):
                return hint
        return None
    return diagnose


def check_rope(fn: Callable[[torch.Tensor, int, float], torch.Tensor]) -> bool:
    """`fn(x, start_pos, theta)` rotates x (batch, seq, heads, head_dim) as Meta's Llama does,
    token t of x sitting at position start_pos + t, and returns x's shape and dtype."""
    exercise = "RoPE"
    gen = torch.Generator().manual_seed(0)
    for shape, start_pos, theta in [((2, 6, 3, 16), 0, 10000.0), ((1, 5, 2, 32), 7, 10000.0),
                                    ((2, 4, 2, 8), 3, 500000.0)]:
        x = torch.randn(shape, generator=gen)
        got = call_learner(fn, x.clone(), start_pos, theta, exercise=exercise)
        compare(got, reference_rope(x, start_pos, theta), exercise=exercise, atol=1e-4,
                rtol=1e-4, diagnose=_rope_diagnose(x, start_pos, theta))
    return passed(exercise, "Meta's interleaved layout, offsets, two values of theta")


def check_unpermute(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> bool:
    """`fn(w, n_heads)` takes a Hugging Face q_proj/k_proj weight back to Meta's row order; then
    a model loaded through it from a Hugging Face state dict must equal the original."""
    exercise = "fix the gibberish (undo the HF permutation)"
    gen = torch.Generator().manual_seed(0)
    for n_heads, head_dim, cols in [(4, 8, 32), (2, 16, 20), (1, 4, 6)]:
        meta = torch.randn(n_heads * head_dim, cols, generator=gen)
        hf = permute_for_hf(meta, n_heads)
        wrong = {
            "that is the Meta -> HF direction (permute_for_hf); you need its inverse":
                permute_for_hf(hf, n_heads),
            "permute within each head (reshape to (n_heads, 2, head_dim/2, cols)), not across "
            "the whole matrix": unpermute_from_hf(hf, 1),
            "the rows must move: HF holds the first halves of all pairs, then the second halves":
                hf,
        }

        def diagnose(got, wrong=wrong):
            return next((h for h, w in wrong.items() if torch.equal(got, w)), None)

        got = call_learner(fn, hf.clone(), n_heads, exercise=exercise)
        compare(got, meta, exercise=exercise + f" (n_heads={n_heads})", atol=0, rtol=0,
                diagnose=diagnose)

    # The whole round trip on a GQA model: wq has n_heads heads, wk n_kv_heads.
    torch.manual_seed(0)
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=16,
                     max_seq_len=32)
    model = Transformer(args).eval()
    loaded = Transformer(args).eval()
    state = {}
    for name, w in meta_to_hf(model.state_dict(), args).items():
        meta_name = hf_to_meta_name(name)
        if meta_name.endswith(("attention.wq.weight", "attention.wk.weight")):
            heads = args.n_heads if meta_name.endswith("wq.weight") else args.kv_heads
            w = call_learner(fn, w.clone(), heads, exercise=exercise)
        state[meta_name] = w
    loaded.load_state_dict(state)
    tokens = torch.randint(0, args.vocab_size, (1, 24), generator=gen)
    with torch.no_grad():
        compare(loaded(tokens), model(tokens), exercise=exercise + " (GQA model logits)",
                atol=1e-5, rtol=1e-5)
    return passed(exercise, "weights round-trip, GQA model gives the same logits at every position")
