"""Command line: generate text or chat with a checkpoint folder (Meta's or Hugging Face's).

    python -m llama2_edu generate --ckpt llama-2-7b --prompt "The capital of France is"
    python -m llama2_edu chat --ckpt llama-2-7b-chat --system "Answer briefly."

`chat` reads one user message per line from stdin until EOF (so `echo "Hi" | ...` works) and
streams each answer as it is sampled, in Llama 2's chat format (llama2_edu.chat). The tokenizer
is the folder's tokenizer.model unless --tokenizer names another. Also installed as the
`llama2-edu` console script.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch

from .checkpoint_io import CheckpointError, load_pretrained, load_tokenizer
from .generation import generate

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


class TextStream:
    """Print tokens as they arrive. SentencePiece marks a word's leading space inside the piece
    ("▁the"), and a character may span several byte tokens, so each token's text is found by
    decoding everything so far and printing what is new (held back while a character is
    incomplete)."""

    def __init__(self, tokenizer, write: Callable[[str], object] | None = None,
                 prefix: list[int] | None = None):
        self.tokenizer = tokenizer
        self.write = write or (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
        # Decoding continues the prefix (e.g. the prompt), so that the space which starts the
        # first new word is kept: SentencePiece drops a leading space when decoding alone.
        self.prefix = list(prefix or [])
        self.ids: list[int] = []
        self.shown = tokenizer.decode(self.prefix)

    def __call__(self, row: int, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.prefix + self.ids)
        if text.endswith("\ufffd"):  # an unfinished multi-byte character
            return
        self.write(text[len(self.shown):])
        self.shown = text

    def text(self) -> str:
        return self.tokenizer.decode(self.ids)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint folder (Meta or Hugging Face)")
    p.add_argument("--tokenizer", help="tokenizer.model (default: the one in --ckpt)")
    p.add_argument("--max-gen-len", type=int, default=128, help="new tokens at most")
    p.add_argument("--temperature", type=float, default=0.6, help="0 means greedy")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="auto",
                   help="weights' dtype; auto keeps the checkpoint's")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llama2_edu",
                                     description="Run a Llama 2 checkpoint.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="continue a prompt")
    _add_common(gen)
    gen.add_argument("--prompt", required=True)
    chat = sub.add_parser("chat", help="chat, one user message per stdin line, until EOF")
    _add_common(chat)
    chat.add_argument("--system", help="system prompt")
    return parser


def _load(opts):
    tokenizer = load_tokenizer(opts.tokenizer or opts.ckpt)
    start = time.perf_counter()
    model = load_pretrained(opts.ckpt, device=opts.device, dtype=DTYPES[opts.dtype])
    if tokenizer.n_words > model.args.vocab_size:
        raise CheckpointError(f"the tokenizer has {tokenizer.n_words} pieces but the model's "
                              f"vocabulary is {model.args.vocab_size}: they do not belong together")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"[loaded {opts.ckpt}: {model.args.n_layers} layers, dim {model.args.dim}, "
          f"{weights / 1e9:.2f} GB {model.output.weight.dtype} on {opts.device} "
          f"in {time.perf_counter() - start:.1f} s]", file=sys.stderr)
    generator = torch.Generator(device=opts.device).manual_seed(opts.seed)
    return model, tokenizer, generator


def _sample(model, tokenizer, generator, ids: list[int], opts,
            prefix: list[int] | None = None) -> str:
    stream = TextStream(tokenizer, prefix=prefix)
    budget = min(opts.max_gen_len, model.args.max_seq_len - len(ids))
    if budget < 1:
        raise ValueError(f"the prompt has {len(ids)} tokens, the model's context is "
                         f"{model.args.max_seq_len}: no room left to generate")
    generate(model, [ids], budget, temperature=opts.temperature, top_p=opts.top_p,
             eos_id=tokenizer.eos_id, generator=generator, on_token=stream)
    print(flush=True)
    return stream.text()


def run_generate(opts) -> None:
    model, tokenizer, generator = _load(opts)
    ids = tokenizer.encode(opts.prompt, bos=True, eos=False)
    sys.stdout.write(tokenizer.decode(ids))
    _sample(model, tokenizer, generator, ids, opts, prefix=ids)


def run_chat(opts) -> None:
    from .chat import encode_dialog

    model, tokenizer, generator = _load(opts)
    dialog = [{"role": "system", "content": opts.system}] if opts.system else []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        if not line.strip():
            continue
        dialog.append({"role": "user", "content": line.strip()})
        ids = encode_dialog(tokenizer, dialog)
        print("assistant> ", end="", flush=True)
        answer = _sample(model, tokenizer, generator, ids, opts)
        dialog.append({"role": "assistant", "content": answer})


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    try:
        (run_generate if opts.command == "generate" else run_chat)(opts)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
