"""Reading and writing whole checkpoints: Meta's folders and Hugging Face's, safely and lean.

Meta's release (what `download.sh` fetches):

    llama-2-7b/   params.json  consolidated.00.pth                      tokenizer.model
    llama-2-13b/  params.json  consolidated.00.pth consolidated.01.pth  (tokenizer.model)
    llama-2-70b/  params.json  consolidated.00.pth ... consolidated.07.pth

Each `consolidated.NN.pth` is the slice of every weight held by one GPU of the model-parallel
group that trained it (fairscale's layers), so loading concatenates the slices back:

    tok_embeddings            ParallelEmbedding     split the embedding dim   -> cat on dim 1
    output, wq, wk, wv, w1, w3 ColumnParallelLinear  split the output rows     -> cat on dim 0
    wo, w2                    RowParallelLinear     split the input columns   -> cat on dim 1
    *_norm, norm              replicated            identical copies          -> take shard 0
    rope.freqs                a derived buffer      recomputed                -> dropped

Hugging Face's layout (`convert_llama_weights_to_hf.py`): `config.json`, then `model.safetensors`
or shards listed in `model.safetensors.index.json` (older uploads: `pytorch_model*.bin`), with
other names and the rows of q/k permuted per head (see `checkpoint.permute_for_hf`).

Loading is lean: the model is built on the meta device (no memory), every tensor is read
through a memory map (only the pages touched are read), converted and placed one tensor at a
time, and the file pages of a tensor already copied are handed back to the OS at once, so the
peak host memory stays near one copy of the weights. When dtype and device already match and
no shards are merged, the mapped tensor is used as is (zero copies).

Loading is safe: pickles only through `torch.load(weights_only=True)`, which refuses any object
that is not a tensor or a plain container (no code runs), and everything (names, shapes, the
file sizes, the config) is checked against the config before any weight is assigned, so a bad
checkpoint raises `CheckpointError` and never yields a half-loaded model.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .checkpoint import (
    args_from_hf_config,
    hf_config_dict,
    hf_to_meta_name,
    meta_to_hf,
    meta_to_hf_name,
)
from .config import ModelArgs
from .model import Transformer, TransformerBlock

PathLike = str | os.PathLike


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is: the message names the file, the tensor,
    what was expected and what was found."""


# --------------------------------------------------------------------------------------------
# Shard merge and split (fairscale's model-parallel rules)
# --------------------------------------------------------------------------------------------

# The dim along which model parallelism split each weight; None = replicated on every shard.
_SHARD_DIM = {
    "tok_embeddings.weight": 1,
    "output.weight": 0,
    "norm.weight": None,
    "attention.wq.weight": 0, "attention.wk.weight": 0, "attention.wv.weight": 0,
    "attention.wo.weight": 1,
    "feed_forward.w1.weight": 0, "feed_forward.w3.weight": 0,
    "feed_forward.w2.weight": 1,
    "attention_norm.weight": None, "ffn_norm.weight": None,
}
_DERIVED = ("rope.freqs",)  # buffers that old Meta checkpoints carry; recomputed, never loaded


def shard_dim(name: str) -> int | None:
    """The dim along which Meta's model-parallel shards split `name` (None: replicated)."""
    key = re.sub(r"^layers\.\d+\.", "", name)
    if key not in _SHARD_DIM:
        raise KeyError(f"not a Llama 2 weight name in Meta's format: {name!r}")
    return _SHARD_DIM[key]


def merge_shards(shards: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One state dict from Meta's model-parallel shards (in file order 00, 01, ...).
    The simple in-memory version of what `load_pretrained` does tensor by tensor."""
    out = {}
    for name in shards[0]:
        if name in _DERIVED:
            continue
        dim = shard_dim(name)
        pieces = [shard[name] for shard in shards]
        out[name] = pieces[0] if dim is None else torch.cat(pieces, dim=dim)
    return out


def split_shards(state_dict: dict[str, torch.Tensor], n_shards: int,
                 args: ModelArgs | None = None) -> list[dict[str, torch.Tensor]]:
    """Cut a Meta-named state dict into `n_shards` model-parallel pieces, the inverse of
    `merge_shards`. Every split dim must divide evenly (e.g. 8 shards need 8 | n_kv_heads,
    as in Llama 2 70B with its 8 KV heads)."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    if args is not None:
        for what, value in (("n_heads", args.n_heads), ("n_kv_heads", args.kv_heads),
                            ("dim", args.dim), ("hidden_dim", args.hidden_dim),
                            ("vocab_size", args.vocab_size)):
            if value % n_shards:
                raise ValueError(f"cannot split into {n_shards} shards: {what} = {value} is not "
                                 f"divisible by {n_shards}")
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(n_shards)]
    for name, tensor in state_dict.items():
        dim = shard_dim(name)
        if dim is None:
            pieces = [tensor] * n_shards
        else:
            if tensor.shape[dim] % n_shards:
                raise ValueError(f"cannot split {name} of shape {tuple(tensor.shape)} into "
                                 f"{n_shards} shards along dim {dim}")
            pieces = tensor.chunk(n_shards, dim=dim)
        for shard, piece in zip(shards, pieces):
            shard[name] = _own(piece)
    return shards


def _own(t: torch.Tensor) -> torch.Tensor:
    """`t` as a tensor that owns exactly its storage. torch.save writes a view's *whole*
    storage (a shard saved as a view would hold every shard), so views are copied; whole
    tensors are not (saving a 7B model must not need a second 13.5 GB)."""
    t = t.detach()
    whole = (t.is_contiguous() and t.storage_offset() == 0
             and t.untyped_storage().nbytes() == t.numel() * t.element_size())
    return t if whole else t.contiguous().clone()


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _state_dict_of(model_or_sd) -> tuple[dict[str, torch.Tensor], ModelArgs | None]:
    if isinstance(model_or_sd, Transformer):
        return model_or_sd.state_dict(), model_or_sd.args
    return dict(model_or_sd), None


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename: a reader never sees a
    half-written file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_json(path: Path, obj: dict) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def meta_params(args: ModelArgs) -> dict:
    """`params.json` as Meta writes it: vocab_size -1 (the tokenizer decides), n_kv_heads and
    ffn_dim_multiplier only when used, rope_theta only when not the default. No max_seq_len:
    Meta's code takes it as a run-time argument."""
    params = {"dim": args.dim, "multiple_of": args.multiple_of, "n_heads": args.n_heads,
              "n_layers": args.n_layers, "norm_eps": args.norm_eps, "vocab_size": -1}
    if args.n_kv_heads is not None:
        params["n_kv_heads"] = args.n_kv_heads
    if args.ffn_dim_multiplier is not None:
        params["ffn_dim_multiplier"] = args.ffn_dim_multiplier
    if args.rope_theta != 10000.0:
        params["rope_theta"] = args.rope_theta
    return params


def _copy_tokenizer(tokenizer_path: PathLike | None, folder: Path) -> None:
    if tokenizer_path is not None:
        data = Path(tokenizer_path).read_bytes()
        _atomic_write(folder / "tokenizer.model", lambda tmp: tmp.write_bytes(data))


def save_meta(model_or_sd, path: PathLike, args: ModelArgs | None = None, n_shards: int = 1,
              tokenizer_path: PathLike | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write a checkpoint folder in Meta's format: params.json, consolidated.00.pth ... (one per
    model-parallel shard, split by fairscale's rules) and, if given, tokenizer.model."""
    sd, model_args = _state_dict_of(model_or_sd)
    args = args or model_args
    if args is None:
        raise ValueError("save_meta needs `args` when given a state dict")
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    folder = Path(path)
    shards = split_shards(sd, n_shards, args)
    for i, shard in enumerate(shards):
        _atomic_write(folder / f"consolidated.{i:02d}.pth", lambda tmp, shard=shard: torch.save(shard, tmp))
    _write_json(folder / "params.json", meta_params(args))
    _copy_tokenizer(tokenizer_path, folder)
    return folder


def _parse_size(size: int | str | None) -> int | None:
    if size is None or isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMG]i?B)\s*", size, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"max_shard_size must be bytes or like '5GB' / '200MiB', got {size!r}")
    unit = match.group(2).upper()
    scale = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    return int(float(match.group(1)) * scale[unit])


def save_hf(model_or_sd, path: PathLike, args: ModelArgs | None = None,
            max_shard_size: int | str | None = None, tokenizer_path: PathLike | None = None,
            dtype: torch.dtype | None = None, safe_serialization: bool = True) -> Path:
    """Write a checkpoint folder in Hugging Face's format: config.json and model.safetensors,
    or, when the weights exceed `max_shard_size` (bytes, or '5GB'), numbered shards plus
    model.safetensors.index.json. `safe_serialization=False` writes pytorch_model*.bin instead
    (the older layout; still read only through the safe loader)."""
    sd, model_args = _state_dict_of(model_or_sd)
    args = args or model_args
    if args is None:
        raise ValueError("save_hf needs `args` when given a state dict")
    hf = {k: v.detach().to(dtype) if dtype else v.detach() for k, v in meta_to_hf(sd, args).items()}
    folder = Path(path)
    limit = _parse_size(max_shard_size)

    groups: list[list[str]] = [[]]  # greedy: a new shard when the next tensor would overflow
    size = 0
    for name, tensor in hf.items():
        nbytes = tensor.numel() * tensor.element_size()
        if limit is not None and groups[-1] and size + nbytes > limit:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes

    stem, ext = ("model", "safetensors") if safe_serialization else ("pytorch_model", "bin")
    n = len(groups)
    weight_map = {}
    for i, names in enumerate(groups):
        fname = f"{stem}.{ext}" if n == 1 else f"{stem}-{i + 1:05d}-of-{n:05d}.{ext}"
        tensors = {name: _own(hf[name]) for name in names}
        if safe_serialization:
            from safetensors.torch import save_file
            _atomic_write(folder / fname,
                          lambda tmp, t=tensors: save_file(t, str(tmp), metadata={"format": "pt"}))
        else:
            _atomic_write(folder / fname, lambda tmp, t=tensors: torch.save(t, tmp))
        weight_map.update({name: fname for name in names})
    if n > 1:
        total = sum(t.numel() * t.element_size() for t in hf.values())
        _write_json(folder / f"{stem}.{ext}.index.json",
                    {"metadata": {"total_size": total}, "weight_map": weight_map})
    config = hf_config_dict(args)
    first = next(iter(hf.values()))
    config["torch_dtype"] = config["dtype"] = str(first.dtype).removeprefix("torch.")
    _write_json(folder / "config.json", config)
    _copy_tokenizer(tokenizer_path, folder)
    return folder


# --------------------------------------------------------------------------------------------
# Reading: open files lazily, describe every tensor, check everything, then copy
# --------------------------------------------------------------------------------------------

@dataclass
class _Piece:
    """One stored tensor that provides (part of) one of our weights."""
    file: Path
    key: str                    # the name inside the file
    shape: tuple[int, ...]
    dtype: torch.dtype
    dim: int | None = None      # merge dim (Meta shards) or None
    offset: int = 0             # where along `dim` this piece goes
    permute_heads: int = 0      # >0: undo HF's q/k permute with this many heads


@dataclass
class _Plan:
    format: str                 # "meta" or "hf"
    folder: Path
    args: ModelArgs
    config_name: str            # "params.json" or "config.json", for messages
    files: list[Path]
    pieces: dict[str, list[_Piece]] = field(default_factory=dict)  # our name -> pieces
    tokenizer_path: Path | None = None


# Files read into ordinary memory rather than mapped: their pages must never be released with
# madvise (anonymous memory would read back as zeros, e.g. through a tied second name).
_NOT_MAPPED: set[Path] = set()


def _torch_load(file: Path) -> dict[str, torch.Tensor]:
    """A pickle checkpoint, read safely: weights_only refuses every object that is not a tensor
    or a plain container, so a payload in the pickle is never executed."""
    try:
        try:
            obj = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # The pre-1.6 (non-zip) format cannot be memory-mapped; still weights_only.
            obj = torch.load(file, map_location="cpu", weights_only=True)
            _NOT_MAPPED.add(file)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{file}: refused to load: the pickle holds something other than tensors and plain "
            f"containers, which could run code when unpickled ({str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        size = file.stat().st_size if file.exists() else 0
        raise CheckpointError(
            f"{file}: not a readable torch checkpoint ({size} bytes; truncated or corrupt?): "
            f"{str(e).splitlines()[0]}") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        found = type(obj).__name__ if not isinstance(obj, dict) else "a dict with non-tensors"
        raise CheckpointError(f"{file}: expected a dict of name -> tensor, found {found}")
    return obj


_SAFE_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def _safetensors_header(file: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes from a safetensors header (a length and a JSON blob), and a
    check that the file really holds all the bytes the header promises."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise CheckpointError(f"{file}: not a safetensors file: header of {n} bytes in a "
                                  f"file of {size} bytes (truncated or corrupt?)")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CheckpointError(f"{file}: unreadable safetensors header: {e}") from None
    out, end = {}, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info.get("dtype") not in _SAFE_DTYPES:
            raise CheckpointError(f"{file}: tensor {name!r} has unsupported dtype "
                                  f"{info.get('dtype')!r}")
        out[name] = (tuple(info["shape"]), _SAFE_DTYPES[info["dtype"]])
        end = max(end, info["data_offsets"][1])
    if 8 + n + end != size:
        raise CheckpointError(f"{file}: truncated or corrupt: the header promises "
                              f"{8 + n + end} bytes, the file has {size}")
    return out


def detect_format(path: PathLike) -> str:
    """"meta" (params.json + consolidated.*.pth) or "hf" (config.json + weights)."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"no checkpoint folder at {folder}")
    if (folder / "params.json").is_file() and any(folder.glob("consolidated.*.pth")):
        return "meta"
    if (folder / "config.json").is_file() and (
            any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))):
        return "hf"
    listing = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise CheckpointError(
        f"{folder}: neither a Meta checkpoint (params.json + consolidated.NN.pth) nor a Hugging "
        f"Face one (config.json + model*.safetensors or pytorch_model*.bin); found: {listing}")


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file}: unreadable JSON: {e}") from None


class _SkipInitOnMeta(TorchFunctionMode):
    """Random initialisation of meta tensors does nothing (there is no data), yet torch runs
    it through Python reference kernels whose first use imports torch._dynamo, seconds per
    process. Skip it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in ("normal_", "uniform_", "kaiming_uniform_"):
            tensor = args[0] if args else kwargs.get("tensor")  # nn.init passes tensor=...
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


def _on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module on the meta device: shapes only, no memory, no initialisation."""
    with torch.device("meta"), _SkipInitOnMeta():
        return build()


def _expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    model = _on_meta(lambda: Transformer(args))
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _args_from_params(params: dict, file: Path, vocab_size: int,
                      max_seq_len: int | None) -> ModelArgs:
    known = {f for f in ModelArgs.__dataclass_fields__}
    fields = {k: v for k, v in params.items() if k in known}
    if fields.get("vocab_size", -1) == -1:
        fields["vocab_size"] = vocab_size
    if max_seq_len is not None:
        fields["max_seq_len"] = max_seq_len
    try:
        return ModelArgs(**fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: not valid Llama 2 params: {e}") from None


def _plan_meta(folder: Path, max_seq_len: int | None,
               opened: list[dict[str, torch.Tensor]]) -> _Plan:
    files = sorted(folder.glob("consolidated.*.pth"))
    numbers = [int(f.name.split(".")[1]) for f in files]
    if numbers != list(range(len(files))):
        raise CheckpointError(f"{folder}: shard files must be numbered 00..{len(files) - 1:02d}, "
                              f"found {', '.join(f.name for f in files)}")
    params_file = folder / "params.json"
    params = _read_json(params_file)
    for file in files:
        opened.append(_torch_load(file))
    n = len(files)
    emb = opened[0].get("tok_embeddings.weight")
    if emb is None:
        raise CheckpointError(f"{files[0]}: missing tensor 'tok_embeddings.weight' "
                              f"(expected in every consolidated.NN.pth)")
    args = _args_from_params(params, params_file, emb.shape[0], max_seq_len)
    expected = _expected_shapes(args)
    plan = _Plan("meta", folder, args, "params.json", files)

    for file, shard in zip(files, opened):
        for key in shard:
            if key in _DERIVED:
                continue
            if key not in expected:
                shape = tuple(shard[key].shape)
                raise CheckpointError(
                    f"{file}: unexpected tensor {key!r} of shape {shape}; params.json "
                    f"(n_layers={args.n_layers}) expects only Llama 2 weights "
                    f"(tok_embeddings, layers.0-{args.n_layers - 1}.*, norm, output)")
    for name, shape in expected.items():
        dim = shard_dim(name)
        pieces, offset = [], 0
        for i, (file, shard) in enumerate(zip(files, opened)):
            if name not in shard:
                raise CheckpointError(
                    f"{file}: missing tensor {name!r}; params.json (n_layers={args.n_layers}, "
                    f"dim={args.dim}) expects it, of shape {shape} in total, in each of the "
                    f"{n} shard(s)")
            t = shard[name]
            if not t.is_floating_point():
                raise CheckpointError(f"{file}: tensor {name!r} has dtype {t.dtype}; expected "
                                      f"a floating-point weight")
            want = list(shape)
            if dim is not None:
                if shape[dim] % n:
                    raise CheckpointError(
                        f"{file}: {name!r} of total shape {shape} cannot be split into {n} "
                        f"shards along dim {dim}")
                want[dim] = shape[dim] // n
            if tuple(t.shape) != tuple(want):
                raise CheckpointError(
                    f"{file}: tensor {name!r} has shape {tuple(t.shape)}, but params.json "
                    f"(dim={args.dim}, n_heads={args.n_heads}, n_kv_heads={args.kv_heads}, "
                    f"hidden={args.hidden_dim}, vocab={args.vocab_size}) with {n} shard(s) "
                    f"implies {tuple(want)}")
            if dim is None and i > 0:
                continue  # replicated: shard 0's copy is the one we load
            pieces.append(_Piece(file, name, tuple(t.shape), t.dtype, dim, offset))
            if dim is not None:
                offset += want[dim]
        plan.pieces[name] = pieces
    plan.tokenizer_path = find_tokenizer(folder)
    return plan


def _hf_weight_files(folder: Path) -> tuple[dict[str, Path] | None, list[Path]]:
    """(weight_map from an index or None, the weight files)."""
    for index_name, pattern in (("model.safetensors.index.json", "*.safetensors"),
                                ("pytorch_model.bin.index.json", "pytorch_model*.bin")):
        index_file = folder / index_name
        if index_file.is_file():
            index = _read_json(index_file)
            if "weight_map" not in index:
                raise CheckpointError(f"{index_file}: no 'weight_map' in the index")
            weight_map = {k: folder / v for k, v in index["weight_map"].items()}
            files = sorted(set(weight_map.values()))
            for file in files:
                if not file.is_file():
                    raise CheckpointError(f"{index_file}: lists {file.name}, which is missing")
            return weight_map, files
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return None, [folder / name]
    raise CheckpointError(f"{folder}: config.json but no model.safetensors, "
                          f"model.safetensors.index.json, pytorch_model.bin or its index")


def _plan_hf(folder: Path, max_seq_len: int | None,
             opened: dict[Path, dict[str, torch.Tensor]]) -> _Plan:
    config_file = folder / "config.json"
    config = _read_json(config_file)
    try:
        args = args_from_hf_config(config)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{config_file}: not a usable Llama config: {e!r}") from None
    if max_seq_len is not None:
        args = args.replace(max_seq_len=max_seq_len)
    weight_map, files = _hf_weight_files(folder)
    expected = _expected_shapes(args)
    plan = _Plan("hf", folder, args, "config.json", files)

    found: dict[str, tuple[Path, tuple[int, ...], torch.dtype]] = {}
    for file in files:
        if file.suffix == ".safetensors":
            header = _safetensors_header(file)
        else:
            opened[file] = _torch_load(file)
            header = {k: (tuple(v.shape), v.dtype) for k, v in opened[file].items()}
        for key, (shape, dtype) in header.items():
            if key.endswith("rotary_emb.inv_freq"):
                continue
            try:
                name = hf_to_meta_name(key)
            except KeyError:
                name = None
            if name not in expected:
                raise CheckpointError(
                    f"{file}: unexpected tensor {key!r} of shape {shape}; config.json "
                    f"(num_hidden_layers={args.n_layers}) expects only Llama weights")
            if weight_map is not None and weight_map.get(key) != file:
                raise CheckpointError(f"{file}: holds {key!r}, which the index maps to "
                                      f"{weight_map.get(key, 'no file')}")
            found[name] = (file, shape, dtype)
    if weight_map is not None:
        present = {meta_to_hf_name(n): f for n, (f, _, _) in found.items()}
        for key, file in weight_map.items():
            if not key.endswith("rotary_emb.inv_freq") and present.get(key) != file:
                raise CheckpointError(f"{file}: missing tensor {key!r}, listed in the index")
    for name, shape in expected.items():
        key = meta_to_hf_name(name)
        if name not in found:
            where = ", ".join(f.name for f in files)
            raise CheckpointError(
                f"{where}: missing tensor {key!r}; config.json (num_hidden_layers="
                f"{args.n_layers}, hidden_size={args.dim}) expects it, of shape {shape}")
        file, got, dtype = found[name]
        if not dtype.is_floating_point:
            raise CheckpointError(f"{file}: tensor {key!r} has dtype {dtype}; expected a "
                                  f"floating-point weight")
        if got != shape:
            raise CheckpointError(
                f"{file}: tensor {key!r} has shape {got}, but config.json (hidden_size="
                f"{args.dim}, heads={args.n_heads}/{args.kv_heads} kv, intermediate_size="
                f"{args.hidden_dim}, vocab_size={args.vocab_size}) implies {shape}")
        heads = (args.n_heads if name.endswith("attention.wq.weight") else
                 args.kv_heads if name.endswith("attention.wk.weight") else 0)
        plan.pieces[name] = [_Piece(file, key, got, dtype, permute_heads=heads)]
    plan.tokenizer_path = find_tokenizer(folder)
    return plan


def _release_pages(t: torch.Tensor) -> None:
    """Tell the OS that the mapped file pages under `t` are no longer needed (Linux madvise
    DONTNEED; a no-op elsewhere). The mapping is private and unmodified, so a later read
    would simply fault the data back in from the file: this only lowers resident memory.
    Only for memory-mapped sources (see _NOT_MAPPED)."""
    if _LIBC is None or t.device.type != "cpu":
        return
    page = 4096
    start, end = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
    start, end = -(-start // page) * page, end // page * page
    if end > start:
        _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), 4)  # MADV_DONTNEED


try:
    _LIBC = ctypes.CDLL(None) if os.uname().sysname == "Linux" else None
except (OSError, AttributeError):
    _LIBC = None


def _materialize(plan: _Plan, names: Iterable[str], opened_meta: list[dict[str, torch.Tensor]],
                 opened_pt: dict[Path, dict[str, torch.Tensor]], device: torch.device,
                 dtype: torch.dtype | None, expected: dict[str, tuple[int, ...]]
                 ) -> dict[str, torch.Tensor]:
    """Read the tensors `names` (already validated), file by file, into their final dtype and
    device. Each file is closed (unmapped) as soon as its pieces are copied."""
    names = list(names)
    out: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[tuple[str, _Piece]]] = {}
    for name in names:
        for piece in plan.pieces[name]:
            by_file.setdefault(piece.file, []).append((name, piece))

    for file in plan.files:
        work = by_file.get(file)
        if not work:
            continue
        with ExitStack() as stack:
            if plan.format == "meta":
                source = opened_meta[plan.files.index(file)]
                get = source.__getitem__
            elif file.suffix == ".safetensors":
                from safetensors import safe_open
                handle = stack.enter_context(safe_open(str(file), framework="pt"))
                get = handle.get_tensor
            else:
                get = opened_pt[file].__getitem__
            for name, piece in work:
                src = get(piece.key)
                target_dtype = dtype or src.dtype
                single = len(plan.pieces[name]) == 1
                if (single and not piece.permute_heads and src.dtype == target_dtype
                        and device.type == "cpu"):
                    out[name] = src  # already right: keep the mapped tensor, no copy
                    continue
                if name not in out:
                    out[name] = torch.empty(expected[name], dtype=target_dtype, device=device)
                dst = out[name]
                if piece.dim is not None and not single:
                    dst = dst.narrow(piece.dim, piece.offset, piece.shape[piece.dim])
                if piece.permute_heads:
                    # undo HF's per-head permute while copying: rows (h, 2, half) -> (h, half, 2)
                    h = piece.permute_heads
                    rows, cols = src.shape
                    dst.view(h, rows // h // 2, 2, cols).copy_(
                        src.view(h, 2, rows // h // 2, cols).transpose(1, 2))
                else:
                    dst.copy_(src)
                if file not in _NOT_MAPPED:
                    _release_pages(src)
                del src
        if plan.format == "meta":
            # drop this shard's mapping unless a tensor of it is used as is (single shard)
            if len(plan.files) > 1:
                opened_meta[plan.files.index(file)] = {}
        else:
            opened_pt.pop(file, None)
    return out


def _plan(path: PathLike, max_seq_len: int | None):
    folder = Path(path)
    fmt = detect_format(folder)
    opened_meta: list[dict[str, torch.Tensor]] = []
    opened_pt: dict[Path, dict[str, torch.Tensor]] = {}
    if fmt == "meta":
        plan = _plan_meta(folder, max_seq_len, opened_meta)
    else:
        plan = _plan_hf(folder, max_seq_len, opened_pt)
    return plan, opened_meta, opened_pt


def read_args(path: PathLike, max_seq_len: int | None = None) -> ModelArgs:
    """The ModelArgs of a checkpoint folder (from params.json or config.json and the weights'
    shapes), after checking the whole checkpoint; no weights are read."""
    return _plan(path, max_seq_len)[0].args


def load_state_dict(path: PathLike, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None, max_seq_len: int | None = None
                    ) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """(args, Meta-named state dict) of a Meta or Hugging Face checkpoint folder, validated in
    full before any tensor is read; shards merged, HF's permute undone."""
    plan, opened_meta, opened_pt = _plan(path, max_seq_len)
    expected = _expected_shapes(plan.args)
    sd = _materialize(plan, expected, opened_meta, opened_pt, torch.device(device), dtype,
                      expected)
    return plan.args, sd


def load_pretrained(path: PathLike, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None, max_seq_len: int | None = None
                    ) -> Transformer:
    """A `Transformer` with the weights of a Meta or Hugging Face checkpoint folder.

    The model is built on the meta device (no memory), the weights are read through memory
    maps, converted to `dtype` (default: as stored) and placed on `device` tensor by tensor,
    then assigned. `max_seq_len` defaults to 4096 (Llama 2's context) for Meta folders and to
    max_position_embeddings for HF ones. The tokenizer found next to the weights, if any, is
    `model.tokenizer_path` (see `load_tokenizer`)."""
    device = torch.device(device)
    args, sd = load_state_dict(path, device, dtype, max_seq_len)
    model = _on_meta(lambda: Transformer(args))
    model.load_state_dict(sd, strict=True, assign=True)
    model.init_rope(device)  # the rotation table is still on "meta" after assign
    model.tokenizer_path = find_tokenizer(path)
    return model.eval()


def find_tokenizer(path: PathLike) -> Path | None:
    """The tokenizer.model that belongs to a checkpoint folder: in the folder (Hugging Face
    layout) or next to it (Meta's download.sh puts one tokenizer.model beside llama-2-7b/,
    llama-2-13b/, ...). None if there is none."""
    folder = Path(path)
    for candidate in (folder / "tokenizer.model", folder.parent / "tokenizer.model"):
        if candidate.is_file():
            return candidate
    return None


def load_tokenizer(path: PathLike):
    """The SentencePiece tokenizer of a checkpoint folder (see `find_tokenizer`), or of a
    tokenizer.model file given directly."""
    from .tokenizer import Tokenizer

    path = Path(path)
    file = (find_tokenizer(path) or path / "tokenizer.model") if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"no tokenizer at {file} (nor in its parent folder): Llama 2 folders carry "
            f"tokenizer.model next to the weights; pass the path of one explicitly "
            f"(e.g. --tokenizer PATH)")
    return Tokenizer(file)


def load_layer(path: PathLike, layer: int, device: torch.device | str = "cpu",
               dtype: torch.dtype | None = None) -> TransformerBlock:
    """One `TransformerBlock` of a checkpoint, reading only that layer's tensors (through the
    memory map, so the other layers' bytes are never read): with Llama 2 7B that is about
    400 MB in bf16, enough to run and inspect a real layer on any CPU. The block carries
    `.args` for building its rotary tables (`model.precompute_rope`)."""
    plan, opened_meta, opened_pt = _plan(path, None)
    args = plan.args
    if not 0 <= layer < args.n_layers:
        raise IndexError(f"layer {layer} out of range: the checkpoint has {args.n_layers} "
                         f"layers (0..{args.n_layers - 1})")
    expected = _expected_shapes(args)
    prefix = f"layers.{layer}."
    names = [n for n in expected if n.startswith(prefix)]
    sd = _materialize(plan, names, opened_meta, opened_pt, torch.device(device), dtype,
                      expected)
    block = _on_meta(lambda: TransformerBlock(args, layer))
    block.load_state_dict({n[len(prefix):]: t for n, t in sd.items()}, strict=True, assign=True)
    block.args = args
    return block.eval()


def checkpoint_bytes(path: PathLike) -> int:
    """Bytes of the weight files in a checkpoint folder."""
    folder = Path(path)
    return sum(f.stat().st_size for pattern in ("*.pth", "*.safetensors", "*.bin")
               for f in folder.glob(pattern))


__all__ = [
    "CheckpointError",
    "checkpoint_bytes",
    "detect_format",
    "find_tokenizer",
    "load_layer",
    "load_pretrained",
    "load_state_dict",
    "load_tokenizer",
    "merge_shards",
    "meta_params",
    "read_args",
    "save_hf",
    "save_meta",
    "shard_dim",
    "split_shards",
]
