"""Load time and peak host memory of `load_pretrained`, Meta and Hugging Face formats.

    python benchmarks/load_memory.py                       # ~1.06B parameters, bf16 (2.1 GB)
    python benchmarks/load_memory.py --preset llama2-7b    # the real size: 13.5 GB in bf16
    python benchmarks/load_memory.py --dtype float32       # load a bf16 checkpoint as fp32

Writes a random checkpoint of the chosen shape in both formats into a temporary folder (Meta:
`--meta-shards` consolidated.NN.pth; HF: safetensors shards of at most `--hf-shard-size`), then
loads each in a fresh subprocess and reports, from `resource.getrusage` in that child, the peak
RSS above the child's baseline after its imports. Two figures per format: right after
`load_pretrained` (memory-mapped weights are only read when used, so this can be small) and
after a forward pass has touched every weight. Target: peak <= 1.2x the weight bytes.
The temporary files are removed at the end, also on errors.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import llama2_edu as L  # noqa: E402
from llama2_edu import checkpoint_io as C  # noqa: E402

# About one billion parameters: Llama 2's vocabulary and FFN rule at half of 7B's width.
ONE_B = L.ModelArgs(dim=2048, n_layers=18, n_heads=16, vocab_size=32000, multiple_of=256)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

CHILD = r"""
import json, resource, sys, time
import torch
import llama2_edu as L
torch.set_num_threads(2)
def peak_mb():  # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
folder, dtype = sys.argv[1], sys.argv[2]
start_peak = peak_mb()
dtype = None if dtype == "none" else getattr(torch, dtype)
L.checkpoint_io.read_args(folder)  # warm the code paths (no weights are read)
try:  # Linux: reset the peak to the current RSS, so the imports' own peak cannot hide ours
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
base = peak_mb()
start = time.perf_counter()
model = L.load_pretrained(folder, dtype=dtype)
seconds = time.perf_counter() - start
after_load = peak_mb()
with torch.no_grad():
    model(torch.tensor([[1, 2]]))  # touches every weight once
after_use = peak_mb()
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps(dict(seconds=seconds, start_peak_mb=start_peak, base_mb=base, rss_mb=rss_mb(), load_mb=after_load - base,
                      used_mb=after_use - base, weight_mb=weights / 2**20)))
"""


def random_state_dict(args: L.ModelArgs, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Random weights of the right shapes, made directly in `dtype` (no fp32 model first)."""
    shapes = C._expected_shapes(args)
    gen = torch.Generator().manual_seed(0)
    return {name: (torch.randn(shape, generator=gen, dtype=dtype) * 0.02
                   if len(shape) > 1 else torch.ones(shape, dtype=dtype))
            for name, shape in shapes.items()}


def measure(folder: Path, dtype: str) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(folder), dtype],
                            capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise RuntimeError(f"child failed on {folder}:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, help="a llama2_edu preset (default: ~1B)")
    parser.add_argument("--save-dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--dtype", choices=["none", *sorted(DTYPES)], default="none",
                        help="dtype to load as (none: as stored)")
    parser.add_argument("--meta-shards", type=int, default=1)
    parser.add_argument("--hf-shard-size", default="1GB")
    parser.add_argument("--tmpdir", default=None, help="where to write the checkpoints")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--write-to", default=None, help=argparse.SUPPRESS)  # internal
    opts = parser.parse_args(argv)

    args = L.ModelArgs.preset(opts.preset) if opts.preset else ONE_B
    save_dtype = DTYPES[opts.save_dtype]
    if opts.write_to:
        sd = random_state_dict(args, save_dtype)
        C.save_meta(sd, Path(opts.write_to) / "meta", args=args, n_shards=opts.meta_shards)
        C.save_hf(sd, Path(opts.write_to) / "hf", args=args, max_shard_size=opts.hf_shard_size)
        return []
    n_params = L.count_parameters(args)
    print(f"shape {opts.preset or '1b (benchmark)'}: {n_params / 1e9:.2f}B parameters, "
          f"{L.weight_bytes(args, save_dtype) / 1e9:.2f} GB in {opts.save_dtype}")
    root = Path(tempfile.mkdtemp(prefix="llama2_edu_load_", dir=opts.tmpdir))
    rows = []
    try:
        start = time.perf_counter()
        # Written by a child process: a child's ru_maxrss starts from its parent's peak on
        # Linux (exec keeps the high-water mark), so this process must stay small.
        subprocess.run([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]),
                        "--write-to", str(root)], check=True, cwd=ROOT)
        print(f"wrote both formats in {time.perf_counter() - start:.0f} s to {root}")
        for fmt in ("meta", "hf"):
            r = measure(root / fmt, opts.dtype)
            files = len(list((root / fmt).glob("*.pth"))) + len(
                list((root / fmt).glob("*.safetensors")))
            r.update(format=fmt, files=files, load_ratio=r["load_mb"] / r["weight_mb"],
                     used_ratio=r["used_mb"] / r["weight_mb"])
            rows.append(r)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"{'format':<6} {'files':>5} {'load s':>7} {'weights MB':>11} "
          f"{'peak after load':>16} {'after a forward':>16}")
    for r in rows:
        print(f"{r['format']:<6} {r['files']:>5} {r['seconds']:>7.2f} {r['weight_mb']:>11.0f} "
              f"{r['load_mb']:>9.0f} ({r['load_ratio']:.2f}x) "
              f"{r['used_mb']:>9.0f} ({r['used_ratio']:.2f}x)")
    worst = max(max(r["load_ratio"], r["used_ratio"]) for r in rows)
    print(f"worst peak RSS / weight bytes: {worst:.2f}x (target <= 1.2x): "
          f"{'OK' if worst <= 1.2 else 'OVER'}")
    if opts.json:
        Path(opts.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
