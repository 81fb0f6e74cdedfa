"""The checks of chapters 00-02 pass on the reference and name the typical mistakes."""

import pytest
import torch
from conftest import fails_with, stub

import llama2_edu as L
from llama2_edu.checkpoint import permute_for_hf, unpermute_from_hf
from llama2_edu.exercises import check_param_count, check_rmsnorm, check_rope, check_unpermute
from llama2_edu.exercises.introduction import _count
from llama2_edu.exercises.rope import _rope, reference_rope


def test_stubs_fail_politely():
    for check in (check_param_count, check_rmsnorm, check_rope, check_unpermute):
        fails_with(check, stub, "not implemented yet")


# ---- 00: parameter count -------------------------------------------------------------------
def test_param_count_passes_on_the_formula(capsys):
    assert check_param_count(L.count_parameters)
    assert capsys.readouterr().out.startswith("✓")


@pytest.mark.parametrize("piece, hint", [
    ("output", "not tied"), ("layer_norms", "two RMSNorm"), ("final_norm", "one more RMSNorm"),
    ("gqa", "n_kv_heads"), ("swiglu", "three matrices"),
])
def test_param_count_names_the_missing_piece(piece, hint):
    fails_with(check_param_count, lambda args: _count(args, **{piece: False}), hint)


def test_param_count_wants_a_whole_number():
    fails_with(check_param_count, lambda args: 1.5, "whole number")


# ---- 01: RMSNorm ---------------------------------------------------------------------------
def rms_fp32(x, w, eps):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * w


def test_rmsnorm_passes_on_correct_variants():
    check_rmsnorm(rms_fp32)
    # rounding once at the very end is as good: it must pass too
    check_rmsnorm(lambda x, w, eps: torch.nn.functional.rms_norm(
        x.float(), (x.shape[-1],), w.float(), eps).to(x.dtype))


@pytest.mark.parametrize("wrong, hint", [
    (lambda x, w, eps: (x.float() / (x.float().pow(2).mean(-1, True).sqrt() + eps)
                        * w).type_as(x), "inside the square root"),
    (lambda x, w, eps: (x * torch.rsqrt(x.pow(2).mean(0, True) + eps) * w), "last dimension"),
    (lambda x, w, eps: (x * torch.rsqrt(x.pow(2).mean() + eps) * w), "whole tensor"),
    (lambda x, w, eps: (x * torch.rsqrt(x.pow(2).mean(-1, True) + eps)), "weight"),
    (lambda x, w, eps: torch.nn.functional.layer_norm(x, (x.shape[-1],), w, None, eps),
     "LayerNorm"),
    (lambda x, w, eps: x * torch.rsqrt(x.pow(2).mean(-1, True) + eps) * w, "fp32 inside"),
    (lambda x, w, eps: rms_fp32(x, w, eps).float(), "keeps the input's dtype"),
])
def test_rmsnorm_names_the_mistake(wrong, hint):
    fails_with(check_rmsnorm, wrong, hint)


# ---- 02: RoPE ------------------------------------------------------------------------------
def rope_variant(exponent=1.0, offset=0, layout="meta", sign=1.0, from_zero=False):
    def fn(x, start_pos, theta):
        d = x.shape[-1]
        inv_freq = theta ** (-exponent * torch.arange(0, d, 2).float() / d)
        first = 0 if from_zero else start_pos + offset
        return _rope(x, torch.arange(first, first + x.shape[1]), inv_freq, layout=layout,
                     sign=sign)
    return fn


def test_rope_passes_on_the_reference_and_on_complex_numbers():
    check_rope(reference_rope)

    def complex_rope(x, start_pos, theta):
        d = x.shape[-1]
        angles = torch.outer(torch.arange(start_pos, start_pos + x.shape[1]).float(),
                             theta ** (-torch.arange(0, d, 2).float() / d))
        z = torch.view_as_complex(x.float().unflatten(-1, (-1, 2))) * torch.polar(
            torch.ones_like(angles), angles)[:, None, :]
        return torch.view_as_real(z).flatten(-2).type_as(x)
    check_rope(complex_rope)
    check_rope(rope_variant())


@pytest.mark.parametrize("kwargs, hint", [
    ({"layout": "hf"}, "rotate_half"), ({"exponent": 0.5}, "-i/head_dim"),
    ({"offset": 1}, "off by one"), ({"offset": -1}, "off by one"),
    ({"from_zero": True}, "not at 0"), ({"sign": -1.0}, "wrong sign"),
])
def test_rope_names_the_mistake(kwargs, hint):
    fails_with(check_rope, rope_variant(**kwargs), hint)


def test_unpermute_passes_on_the_library_and_names_the_mistakes():
    check_unpermute(unpermute_from_hf)
    fails_with(check_unpermute, permute_for_hf, "inverse")
    fails_with(check_unpermute, lambda w, n: unpermute_from_hf(w, 1), "within each head")
    fails_with(check_unpermute, lambda w, n: w.clone(), "rows must move")


def test_weight_gib_passes_and_names_units():
    from llama2_edu.exercises import check_weight_gib

    check_weight_gib(lambda args, nbytes: L.weight_bytes(args, torch.float32) / 4 * nbytes / 2**30)
    fails_with(check_weight_gib, lambda a, n: L.count_parameters(a) * n / 1e9, "that is GB")
    fails_with(check_weight_gib, lambda a, n: L.count_parameters(a) * n, "that is bytes")
    fails_with(check_weight_gib, lambda a, n: L.count_parameters(a) / 2**30, "bytes per parameter")


def test_layernorm_passes_and_names_the_mistakes():
    from llama2_edu.exercises import check_layernorm

    def ln(x, w, b, eps, unbiased=False):
        mu = x.mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(x.var(-1, unbiased=unbiased, keepdim=True) + eps) * w + b

    check_layernorm(ln)
    fails_with(check_layernorm, lambda x, w, b, eps: ln(x, w, b, eps, unbiased=True), "biased")
    fails_with(check_layernorm, lambda x, w, b, eps: rms_fp32(x, w, eps) + b, "RMSNorm")
    fails_with(check_layernorm, lambda x, w, b, eps: ln(x, w, b, eps) - b, "bias")
