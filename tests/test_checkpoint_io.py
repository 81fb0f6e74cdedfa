"""Whole checkpoints: Meta and Hugging Face folders written here, read back bit for bit, opened
by transformers, and every kind of broken checkpoint refused with a message that says where."""

import json
import os
from pathlib import Path

import pytest
import torch
from hf_reference import random_model

import llama2_edu as L
from llama2_edu import checkpoint_io as C
from llama2_edu.checkpoint_io import CheckpointError

# MHA with 8 heads, and GQA with 8 KV heads as in Llama 2 70B (8 KV heads over 8 shards).
KINDS = {
    "mha": dict(dim=64, n_heads=8, n_kv_heads=None),
    "gqa8": dict(dim=128, n_heads=16, n_kv_heads=8, ffn_dim_multiplier=1.3),
}


@pytest.fixture(scope="module", params=sorted(KINDS))
def model(request):
    return random_model(seed=4, **KINDS[request.param])


def _assert_same_weights(a: L.Transformer, b: L.Transformer):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        assert torch.equal(sa[name], sb[name]), name


@pytest.mark.parametrize("n_shards", [1, 2, 8])
def test_meta_round_trip_is_bit_identical(model, tmp_path, n_shards):
    C.save_meta(model, tmp_path, n_shards=n_shards)
    files = sorted(p.name for p in tmp_path.glob("consolidated.*.pth"))
    assert files == [f"consolidated.{i:02d}.pth" for i in range(n_shards)]
    params = json.loads((tmp_path / "params.json").read_text())
    assert params["vocab_size"] == -1  # as Meta ships it: the embedding decides
    loaded = C.load_pretrained(tmp_path)
    _assert_same_weights(model, loaded)
    tokens = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))


@pytest.mark.parametrize("layout", ["single", "sharded", "bin", "bin-sharded"])
def test_hf_round_trip_is_bit_identical(model, tmp_path, layout):
    shard = 40_000 if "sharded" in layout else None
    C.save_hf(model, tmp_path, max_shard_size=shard, safe_serialization="bin" not in layout)
    names = {p.name for p in tmp_path.iterdir()}
    if layout == "single":
        assert "model.safetensors" in names
    elif layout == "sharded":
        assert "model.safetensors.index.json" in names
        assert sum(n.endswith(".safetensors") for n in names) > 2
        weight_map = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        for f in tmp_path.glob("*.safetensors"):  # under the limit, or one tensor alone
            held = [k for k, v in weight_map["weight_map"].items() if v == f.name]
            assert f.stat().st_size <= 40_000 + 4_000 or len(held) == 1
    _assert_same_weights(model, C.load_pretrained(tmp_path))


def test_legacy_non_zip_bin_loads_with_conversion(tmp_path):
    from llama2_edu.checkpoint import meta_to_hf

    model = random_model(seed=3, **KINDS["mha"])
    C.save_hf(model, tmp_path, safe_serialization=False)
    # the pre-1.6 pickle format cannot be memory-mapped: read into memory, still weights_only
    torch.save(meta_to_hf(model.state_dict(), model.args), tmp_path / "pytorch_model.bin",
               _use_new_zipfile_serialization=False)
    loaded = C.load_pretrained(tmp_path, dtype=torch.float64)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor.double()), name


def test_meta_and_hf_merge_of_shards_matches_split():
    model = random_model(seed=5, **KINDS["gqa8"])
    sd = model.state_dict()
    shards = C.split_shards(sd, 8, model.args)
    assert shards[0]["tok_embeddings.weight"].shape == (128, 16)  # embedding dim split
    assert shards[0]["layers.0.attention.wk.weight"].shape == (8, 128)  # one KV head each
    assert shards[0]["layers.0.attention.wo.weight"].shape == (128, 16)  # input columns split
    merged = C.merge_shards(shards)
    assert all(torch.equal(merged[k], sd[k]) for k in sd)


def test_split_refuses_kv_heads_not_divisible_by_shards():
    model = random_model(seed=0, dim=64, n_heads=8, n_kv_heads=2)
    with pytest.raises(ValueError, match="n_kv_heads = 2 is not divisible by 8"):
        C.split_shards(model.state_dict(), 8, model.args)


def test_load_converts_dtype_and_rope_is_real(tmp_path):
    model = random_model(seed=6, **KINDS["gqa8"])
    C.save_meta(model, tmp_path, n_shards=2)
    loaded = C.load_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.output.weight.dtype == torch.bfloat16 and loaded.rope.device.type == "cpu"
    for name, t in loaded.state_dict().items():
        assert torch.equal(t, model.state_dict()[name].to(torch.bfloat16)), name
    assert loaded.args.max_seq_len == 4096  # Meta's params.json has none: Llama 2's context
    assert C.load_pretrained(tmp_path, max_seq_len=64).args.max_seq_len == 64


def test_bf16_checkpoint_stays_bf16_and_drops_rope_freqs(tmp_path):
    model = random_model(seed=7, **KINDS["mha"])
    C.save_meta(model, tmp_path, dtype=torch.bfloat16)
    shard = torch.load(tmp_path / "consolidated.00.pth", weights_only=True)
    shard["rope.freqs"] = torch.ones(4)  # early Meta checkpoints carry this derived buffer
    torch.save(shard, tmp_path / "consolidated.00.pth")
    loaded = C.load_pretrained(tmp_path)
    assert loaded.tok_embeddings.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("fmt", ["meta", "hf"])
def test_hf_format_save_matches_transformers(tmp_path, fmt):
    from transformers import LlamaForCausalLM

    model = random_model(seed=8, **KINDS["gqa8"])
    C.save_meta(model, tmp_path / "meta", n_shards=2)
    # Meta -> ours -> HF on disk -> transformers: the path a reader takes to share a model.
    ours = C.load_pretrained(tmp_path / "meta")
    C.save_hf(ours, tmp_path / "hf", max_shard_size=None if fmt == "meta" else "100KB")
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    hf.config._attn_implementation = "eager"
    tokens = torch.randint(0, 128, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (hf(tokens).logits - ours(tokens)).abs().max().item()
    assert diff < 1e-5


def test_hf_inv_freq_is_ignored(tmp_path):
    from safetensors.torch import load_file, save_file

    model = random_model(seed=9, **KINDS["mha"])
    C.save_hf(model, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    _assert_same_weights(model, C.load_pretrained(tmp_path))


def test_load_layer_reads_one_block(tmp_path):
    from llama2_edu.model import precompute_rope

    model = random_model(seed=10, **KINDS["gqa8"])
    for fmt, save in (("meta", lambda p: C.save_meta(model, p, n_shards=2)),
                      ("hf", lambda p: C.save_hf(model, p, max_shard_size="60KB"))):
        save(tmp_path / fmt)
        block = C.load_layer(tmp_path / fmt, 1)
        assert set(block.state_dict()) == {k[len("layers.1."):] for k in model.state_dict()
                                          if k.startswith("layers.1.")}
        x = torch.randn(1, 5, model.args.dim)
        rot = precompute_rope(model.args.head_dim, 5, model.args.rope_theta)
        with torch.no_grad():
            assert torch.equal(block(x, rot), model.layers[1](x, rot))
        with pytest.raises(IndexError, match="layer 2 out of range"):
            C.load_layer(tmp_path / fmt, 2)


# ---- safety ---------------------------------------------------------------------------------

class _Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["meta", "hf-bin"])
def test_code_payload_is_refused_and_never_runs(tmp_path, fmt):
    model = random_model(seed=11, **KINDS["mha"])
    marker = tmp_path / "PWNED"
    folder = tmp_path / "ckpt"
    if fmt == "meta":
        C.save_meta(model, folder)
        target = folder / "consolidated.00.pth"
    else:
        C.save_hf(model, folder, safe_serialization=False)
        target = folder / "pytorch_model.bin"
    evil = torch.load(target, weights_only=True)
    evil["norm.weight" if fmt == "meta" else "model.norm.weight"] = _Payload(marker)
    torch.save(evil, target)
    with pytest.raises(CheckpointError, match="refused") as info:
        C.load_pretrained(folder)
    assert target.name in str(info.value)
    assert not marker.exists()  # the payload did not run


# ---- bad inputs: each names the file, the key, what was expected and what was found ----------

def _meta(tmp_path, n_shards=1):
    model = random_model(seed=12, **KINDS["gqa8"])
    return model, C.save_meta(model, tmp_path / "meta", n_shards=n_shards)


def _hf(tmp_path, **kw):
    model = random_model(seed=12, **KINDS["gqa8"])
    return model, C.save_hf(model, tmp_path / "hf", **kw)


def _edit_pth(file: Path, edit):
    sd = torch.load(file, weights_only=True)
    edit(sd)
    torch.save(sd, file)


def test_truncated_pth(tmp_path):
    _, folder = _meta(tmp_path, n_shards=2)
    file = folder / "consolidated.01.pth"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"consolidated\.01\.pth: not a readable torch "
                                              r"checkpoint \(\d+ bytes; truncated"):
        C.load_pretrained(folder)


def test_truncated_safetensors(tmp_path):
    _, folder = _hf(tmp_path, max_shard_size="100KB")
    file = sorted(folder.glob("*.safetensors"))[-1]
    size = file.stat().st_size
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=rf"{file.name}: truncated or corrupt: the header "
                                              rf"promises {size} bytes, the file has {size - 100}"):
        C.load_pretrained(folder)


def test_missing_key_meta(tmp_path):
    _, folder = _meta(tmp_path, n_shards=2)
    _edit_pth(folder / "consolidated.01.pth", lambda sd: sd.pop("layers.1.feed_forward.w2.weight"))
    with pytest.raises(CheckpointError, match=r"consolidated\.01\.pth: missing tensor "
                                              r"'layers\.1\.feed_forward\.w2\.weight'.*shape "
                                              r"\(128, 448\)"):
        C.load_pretrained(folder)


def test_missing_key_hf(tmp_path):
    from safetensors.torch import load_file, save_file

    _, folder = _hf(tmp_path)
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.0.self_attn.v_proj.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing tensor "
                                              r"'model\.layers\.0\.self_attn\.v_proj\.weight'"
                                              r".*shape \(64, 128\)"):
        C.load_pretrained(folder)


def test_unexpected_key_meta(tmp_path):
    _, folder = _meta(tmp_path)
    _edit_pth(folder / "consolidated.00.pth",
              lambda sd: sd.__setitem__("layers.0.attention.bias", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"consolidated\.00\.pth: unexpected tensor "
                                              r"'layers\.0\.attention\.bias' of shape \(3,\)"):
        C.load_pretrained(folder)


def test_unexpected_key_hf_and_index_mismatch(tmp_path):
    from safetensors.torch import load_file, save_file

    _, folder = _hf(tmp_path, max_shard_size="100KB")
    index_file = folder / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    first = index["weight_map"]["model.embed_tokens.weight"]
    index_file.write_text(json.dumps({**index, "weight_map": {
        **index["weight_map"], "model.layers.9.mlp.up_proj.weight": first}}))
    with pytest.raises(CheckpointError, match=rf"{first}: missing tensor "
                                              r"'model\.layers\.9\.mlp\.up_proj\.weight', listed"):
        C.load_pretrained(folder)
    index_file.write_text(json.dumps(index))
    tensors = load_file(folder / first)
    tensors["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(2, 2)
    save_file(tensors, folder / first, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"{first}: unexpected tensor "
                                              r"'model\.layers\.0\.mlp\.extra_proj\.weight' "
                                              r"of shape \(2, 2\)"):
        C.load_pretrained(folder)


def test_wrong_shape(tmp_path):
    _, folder = _meta(tmp_path)
    _edit_pth(folder / "consolidated.00.pth",
              lambda sd: sd.__setitem__("layers.1.attention.wk.weight", torch.zeros(32, 128)))
    with pytest.raises(CheckpointError, match=r"consolidated\.00\.pth: tensor "
                                              r"'layers\.1\.attention\.wk\.weight' has shape "
                                              r"\(32, 128\), but params\.json .* implies "
                                              r"\(64, 128\)"):
        C.load_pretrained(folder)


def test_params_json_disagreeing_with_weights(tmp_path):
    _, folder = _meta(tmp_path)
    params = json.loads((folder / "params.json").read_text())
    (folder / "params.json").write_text(json.dumps({**params, "n_layers": 3}))
    with pytest.raises(CheckpointError, match=r"missing tensor 'layers\.2\..*params\.json "
                                              r"\(n_layers=3"):
        C.load_pretrained(folder)
    (folder / "params.json").write_text(json.dumps({**params, "n_kv_heads": 4}))
    with pytest.raises(CheckpointError, match=r"'layers\.0\.attention\.wk\.weight' has shape "
                                              r"\(64, 128\), but params\.json .*n_kv_heads=4.*"
                                              r"implies \(32, 128\)"):
        C.load_pretrained(folder)


def test_config_json_disagreeing_with_weights(tmp_path):
    _, folder = _hf(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 512}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor "
                                              r"'model\.layers\.0\.mlp\.gate_proj\.weight' has "
                                              r"shape \(448, 128\), but config\.json .* implies "
                                              r"\(512, 128\)"):
        C.load_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.1\."):
        C.load_pretrained(folder)


def test_not_a_checkpoint_and_missing_tokenizer(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="neither a Meta checkpoint.*found: notes.txt"):
        C.load_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no tokenizer at"):
        C.load_tokenizer(tmp_path)


def test_tokenizer_found_in_folder_or_beside_it_as_meta_downloads_it(tmp_path):
    from llama2_edu.tokenizer import train_tokenizer

    # Meta's download.sh: tokenizer.model beside llama-2-7b/, not inside it
    tok = train_tokenizer(["a tiny corpus for a tiny tokenizer, nothing more"] * 8, 280,
                          tmp_path / "tokenizer.model")
    model = random_model(seed=13, vocab_size=280, **KINDS["mha"])
    C.save_meta(model, tmp_path / "llama-2-7b")
    assert C.load_tokenizer(tmp_path / "llama-2-7b").n_words == tok.n_words
    assert C.load_pretrained(tmp_path / "llama-2-7b").tokenizer_path == tmp_path / "tokenizer.model"
    C.save_hf(model, tmp_path / "hf" / "inner", tokenizer_path=tok.path)  # HF: inside
    assert C.find_tokenizer(tmp_path / "hf" / "inner") == tmp_path / "hf" / "inner" / "tokenizer.model"


def test_package_exports():
    assert L.load_pretrained is C.load_pretrained
    assert L.checkpoint.meta_to_hf and L.checkpoint.hf_to_meta
