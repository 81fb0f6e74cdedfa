"""Decode speed of a Llama 2 7B-shaped model on one GPU, against the GPU's own copy bandwidth.

    python benchmarks/gpu_decode.py                               # llama2-7b, bf16, cuda
    python benchmarks/gpu_decode.py --preset tiny-gqa --device cpu --no-compile   # smoke test

Random bf16 weights are initialised directly on the device (nothing is loaded). Decoding is
memory-bound: every step reads all the weights and the KV cache once, so the figure of merit
is bytes read per step / step time, compared with a device-to-device copy measured in the same
run. Three ways to run the same single-token step, at batch 1, 8 and 32:

  eager     the library as `generate` uses it: `model(tok, start_pos, cache)`, one Python-
            launched kernel at a time, attention over the filled prefix of the cache.
  graph     the same modules in a static-shape step (position as a tensor, attention over the
            whole preallocated cache with a mask, cache writes by index), captured once in a
            CUDA graph and replayed: no Python or launch overhead left.
  compiled  as `graph`, with each layer's step compiled by `torch.compile` (one compilation
            reused by all layers; fuses the norms, RoPE and SwiGLU elementwise work), then
            captured in a CUDA graph. Skipped with the reason if compilation fails or the
            --budget-s time budget is spent.

The KV cache holds --prompt-len random positions when decoding starts (no prefill is timed).
Prints a compact table; writes JSON to $OUT/gpu_decode.json (or --json) after every
measurement, so a run cut short still leaves its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import llama2_edu as L  # noqa: E402
from llama2_edu.config import bytes_per_element  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int = 20) -> float:
    """Device-to-device copy, GB/s counting bytes read + bytes written (the usual convention)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    src.fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    sync(device)
    return 2 * nbytes * repeats / (time.perf_counter() - start) / 1e9


def rope_real(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Meta's adjacent-pair rotation written with real numbers (what torch.compile handles
    best): (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos). Same result as model.apply_rope."""
    pairs = x.float().unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2).type_as(x)


def layer_step(h, attention_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3, k_cache, v_cache,
               cos, sin, pos, mask, eps: float, n_heads: int, n_kv_heads: int):
    """One TransformerBlock for one new token per row, on plain tensors (so a single compiled
    version serves every layer). Writes this position's K and V into the caches in place."""
    batch = h.shape[0]
    head_dim = wq.shape[0] // n_heads
    x = F.rms_norm(h.float(), (h.shape[-1],), eps=eps).type_as(h) * attention_norm
    q = F.linear(x, wq).view(batch, 1, n_heads, head_dim)
    k = F.linear(x, wk).view(batch, 1, n_kv_heads, head_dim)
    v = F.linear(x, wv).view(batch, 1, n_kv_heads, head_dim)
    q, k = rope_real(q, cos, sin), rope_real(k, cos, sin)
    k_cache[:, :, pos] = k.transpose(1, 2)  # index_put: compiled in place
    v_cache[:, :, pos] = v.transpose(1, 2)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k_cache, v_cache, attn_mask=mask,
                                         enable_gqa=n_kv_heads != n_heads)
    h = h + F.linear(out.transpose(1, 2).reshape(batch, 1, -1), wo)
    x = F.rms_norm(h.float(), (h.shape[-1],), eps=eps).type_as(h) * ffn_norm
    return h + F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)


class StaticDecoder:
    """Fixed-shape single-token decoding on a model's weights: a cache of `max_len` positions
    per layer, the position as a 1-element tensor, attention over all positions with a mask.
    Fixed shapes and no host synchronisation are what CUDA graphs need."""

    def __init__(self, model: L.Transformer, batch: int, max_len: int, layer_fn=layer_step):
        args, w = model.args, model.output.weight
        shape = (batch, args.kv_heads, max_len, args.head_dim)
        self.model, self.layer_fn, self.max_len = model, layer_fn, max_len
        self.k = [torch.zeros(shape, dtype=w.dtype, device=w.device) for _ in model.layers]
        self.v = [torch.zeros(shape, dtype=w.dtype, device=w.device) for _ in model.layers]
        rope = model.rope[:max_len]
        self.cos, self.sin = rope.real.contiguous(), rope.imag.contiguous()
        self.positions = torch.arange(max_len, device=w.device)

    def step(self, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Logits (batch, vocab) in fp32 for tokens `tok` (batch, 1) at position `pos` (1,)."""
        m, args = self.model, self.model.args
        h = m.tok_embeddings(tok)
        cos, sin = self.cos[pos][:, None, :], self.sin[pos][:, None, :]
        mask = (self.positions <= pos).view(1, 1, 1, -1)
        for i, layer in enumerate(m.layers):
            a, f = layer.attention, layer.feed_forward
            h = self.layer_fn(h, layer.attention_norm.weight, a.wq.weight, a.wk.weight,
                              a.wv.weight, a.wo.weight, layer.ffn_norm.weight, f.w1.weight,
                              f.w2.weight, f.w3.weight, self.k[i], self.v[i], cos, sin, pos,
                              mask, layer.attention_norm.eps, args.n_heads, args.kv_heads)
        return m.output(m.norm(h))[:, -1].float()


def random_cache_(tensors: list[torch.Tensor], generator: torch.Generator) -> None:
    for t in tensors:
        t.copy_(torch.randn(t.shape, generator=generator, device="cpu").to(t) * 0.5)


def time_steps(step, n_warmup: int, n_steps: int, device: torch.device) -> float:
    """Seconds per step, after warm-up."""
    for _ in range(n_warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(n_steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / n_steps


def run_eager(model, batch, prompt_len, n_warmup, n_steps, device, gen):
    cache = model.new_cache(batch, prompt_len + n_warmup + n_steps + 1)
    random_cache_(cache.keys[:1] + cache.values[:1], gen)
    for t in cache.keys[1:] + cache.values[1:]:
        t.copy_(cache.keys[0])
    tok = torch.ones(batch, 1, dtype=torch.long, device=device)
    state = {"pos": prompt_len, "tok": tok}

    def step():
        logits = model(state["tok"], start_pos=state["pos"], cache=cache, last_only=True)
        state["tok"] = logits[:, -1].argmax(-1, keepdim=True)
        state["pos"] += 1

    with torch.inference_mode():
        seconds = time_steps(step, n_warmup, n_steps, device)
    mean_len = prompt_len + n_warmup + n_steps / 2  # the prefix attention reads, on average
    return seconds, mean_len


def run_static(model, batch, max_len, prompt_len, n_warmup, n_steps, device, gen, layer_fn,
               use_graph: bool):
    dec = StaticDecoder(model, batch, max_len, layer_fn)
    random_cache_(dec.k[:1] + dec.v[:1], gen)
    for t in dec.k[1:] + dec.v[1:]:
        t.copy_(dec.k[0])
    tok = torch.ones(batch, 1, dtype=torch.long, device=device)
    pos = torch.tensor([prompt_len], device=device)

    def eager_step():  # the whole loop body on the device: no host sync
        logits = dec.step(tok, pos)
        tok.copy_(logits.argmax(-1, keepdim=True))
        pos.add_(1)

    with torch.inference_mode():
        eager_step()  # first call: compiles when layer_fn is compiled
        sync(device)
        pos.fill_(prompt_len)
        if not use_graph:
            return time_steps(eager_step, n_warmup, n_steps, device), max_len
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                eager_step()
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            eager_step()
        pos.fill_(prompt_len)
        sync(device)
        # every replay reads the whole max_len cache: that is what the static step costs
        return time_steps(graph.replay, n_warmup, n_steps, device), max_len


def check_static_matches_eager(model, device, gen, prompt_len: int = 5) -> float:
    """Max |logits difference| between the library's forward and the static step on the same
    cache contents: the benchmark must time the same computation."""
    args = model.args
    dec = StaticDecoder(model, 2, prompt_len + 4)
    cache = model.new_cache(2, prompt_len + 4)
    random_cache_(cache.keys + cache.values, gen)
    for i in range(args.n_layers):
        dec.k[i].copy_(cache.keys[i])
        dec.v[i].copy_(cache.values[i])
    tok = torch.randint(0, args.vocab_size, (2, 1), generator=gen).to(device)
    with torch.inference_mode():
        ours = model(tok, start_pos=prompt_len, cache=cache, last_only=True)[:, -1]
        static = dec.step(tok, torch.tensor([prompt_len], device=device))
    return (ours - static).abs().max().item()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llama2-7b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--budget-s", type=float, default=150.0,
                        help="start no new compiled run after this many seconds")
    parser.add_argument("--json", default=None, help="default: $OUT/gpu_decode.json if OUT set")
    parser.add_argument("--force", action="store_true", help="run a big model on the CPU anyway")
    opts = parser.parse_args(argv)
    n_params = L.count_parameters(L.ModelArgs.preset(opts.preset))
    if torch.device(opts.device).type == "cpu" and n_params > 2e8 and not opts.force:
        raise SystemExit(
            f"refusing to run {opts.preset} ({n_params / 1e9:.1f}B parameters) on the CPU: "
            f"torch {torch.__version__} sees no CUDA device (cuda available: "
            f"{torch.cuda.is_available()}). On a GPU machine install a CUDA build of torch; "
            f"for the smoke test use --preset tiny-gqa --device cpu (or pass --force).")

    t0 = time.perf_counter()
    device, dtype = torch.device(opts.device), DTYPES[opts.dtype]
    json_path = opts.json or (Path(os.environ["OUT"]) / "gpu_decode.json"
                              if os.environ.get("OUT") else None)
    use_graph = device.type == "cuda"
    max_len = opts.prompt_len + opts.warmup + opts.steps + 8
    args = L.ModelArgs.preset(opts.preset, max_seq_len=max_len)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in dtype, on the device
    try:
        with torch.device(device):
            model = L.Transformer(args).eval()
    finally:
        torch.set_default_dtype(default)
    model.requires_grad_(False)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_per_token = L.kv_cache_bytes(args, 1, 1, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {
        "device": name, "preset": opts.preset, "dtype": opts.dtype,
        "parameters": L.count_parameters(args), "weight_bytes": weight_bytes,
        "torch": torch.__version__, "prompt_len": opts.prompt_len, "steps": opts.steps,
        "init_s": time.perf_counter() - t0, "runs": [],
    }

    def save():
        if json_path:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            Path(json_path).write_text(json.dumps(result, indent=2))

    copy_bytes = min(2 * 2**30, max(weight_bytes, 64 * 2**20))
    result["copy_GBps"] = copy_bandwidth(device, copy_bytes)
    result["static_vs_eager_max_abs_logit_diff"] = check_static_matches_eager(model, device, gen)
    print(f"{name}: {opts.preset} {opts.dtype}, {result['parameters'] / 1e9:.2f}B parameters "
          f"({weight_bytes / 1e9:.2f} GB), init {result['init_s']:.1f} s; device copy "
          f"{result['copy_GBps']:.0f} GB/s (read+write); static step vs library logits: "
          f"max diff {result['static_vs_eager_max_abs_logit_diff']:.2e}", flush=True)
    save()

    def record(kind, batch, seconds, cache_len, note=""):
        read = weight_bytes + batch * cache_len * kv_per_token
        run = {"kind": kind, "batch": batch, "ms_per_step": seconds * 1e3,
               "tokens_per_s": batch / seconds, "GBps": read / seconds / 1e9,
               "bytes_per_step": read, "note": note}
        run["of_copy"] = run["GBps"] / result["copy_GBps"]
        result["runs"].append(run)
        save()
        print(f"  {kind:<9} batch {batch:>3}: {run['tokens_per_s']:9.1f} tok/s "
              f"{run['ms_per_step']:8.2f} ms/step {run['GBps']:8.1f} GB/s "
              f"({run['of_copy']:.0%} of copy) {note}", flush=True)

    n = (opts.prompt_len, opts.warmup, opts.steps)
    for batch in opts.batches:
        seconds, cache_len = run_eager(model, batch, *n, device, gen)
        record("eager", batch, seconds, cache_len)
        seconds, cache_len = run_static(model, batch, max_len, *n, device, gen, layer_step,
                                        use_graph)
        record("graph" if use_graph else "static", batch, seconds, cache_len)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    if not opts.no_compile:
        compiled = torch.compile(layer_step, fullgraph=True, dynamic=False)
        for batch in opts.batches:
            elapsed = time.perf_counter() - t0
            if elapsed > opts.budget_s:
                result["runs"].append({"kind": "compiled", "batch": batch,
                                       "note": f"skipped: {elapsed:.0f} s > budget"})
                print(f"  compiled  batch {batch:>3}: skipped (time budget)", flush=True)
                continue
            start = time.perf_counter()
            try:
                seconds, cache_len = run_static(model, batch, max_len, *n, device, gen,
                                                compiled, use_graph)
            except Exception as e:  # report and go on: the other figures still count
                note = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                result["runs"].append({"kind": "compiled", "batch": batch, "note": note})
                save()
                print(f"  compiled  batch {batch:>3}: {note}", flush=True)
                break
            record("compiled", batch, seconds, cache_len,
                   f"(compile+capture {time.perf_counter() - start:.0f} s)")

    result["total_s"] = time.perf_counter() - t0
    save()
    for batch in opts.batches:
        done = [r for r in result["runs"] if r.get("batch") == batch and "GBps" in r]
        best = max(done, key=lambda r: r["GBps"])
        print(f"best at batch {batch}: {best['kind']}, {best['tokens_per_s']:.1f} tok/s, "
              f"{best['of_copy']:.0%} of copy bandwidth"
              + (" (target >= 70%)" if batch == 1 else ""))
    print(f"total {result['total_s']:.0f} s")
    return result


if __name__ == "__main__":
    main()
