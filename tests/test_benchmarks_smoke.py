"""The GPU benchmarks, run at tiny size on the CPU so that they cannot rot between GPU runs."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import llama2_edu as L
from llama2_edu.model import apply_rope, precompute_rope

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_decode():
    return _module("gpu_decode")


def test_gpu_decode_runs_on_cpu_and_writes_json(gpu_decode, tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path))
    result = gpu_decode.main(["--preset", "tiny-gqa", "--device", "cpu", "--no-compile",
                              "--dtype", "float32", "--batches", "1", "3", "--prompt-len", "6",
                              "--warmup", "1", "--steps", "3"])
    # the static (CUDA-graph-able) step computes what the library computes
    assert result["static_vs_eager_max_abs_logit_diff"] < 1e-5
    kinds = [(r["kind"], r["batch"]) for r in result["runs"]]
    assert kinds == [("eager", 1), ("static", 1), ("eager", 3), ("static", 3)]
    assert all(r["tokens_per_s"] > 0 and r["GBps"] > 0 for r in result["runs"])
    saved = json.loads((tmp_path / "gpu_decode.json").read_text())
    assert saved["runs"] == result["runs"] and saved["copy_GBps"] > 0


def test_real_valued_rope_equals_the_library(gpu_decode):
    x = torch.randn(2, 5, 4, 16)
    rot = precompute_rope(16, 5)
    cos, sin = rot.real[:, None, :], rot.imag[:, None, :]
    torch.testing.assert_close(gpu_decode.rope_real(x, cos, sin), apply_rope(x, rot))


def test_load_memory_default_shape_is_about_one_billion():
    load_memory = _module("load_memory")
    n = L.count_parameters(load_memory.ONE_B)
    assert 0.9e9 < n < 1.2e9
    sd = load_memory.random_state_dict(L.ModelArgs.preset("tiny-gqa"), torch.bfloat16)
    assert sd["layers.0.attention.wk.weight"].shape == (32, 64)
    assert all(t.dtype == torch.bfloat16 for t in sd.values())
