"""Text <-> token ids, and the chat template, from what the checkpoint ships.

Built on the `tokenizers` library alone: transformers is not imported at run time (it is slow to
import and pulls in torch when torch is installed). A Hugging Face directory gives tokenizer.json and
tokenizer_config.json; a GGUF file gives llama.cpp's `tokenizer.ggml.*` metadata, rebuilt here into
the same byte-level BPE that transformers builds from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import tokenizers
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

from lpu_jax.errors import UserError
from lpu_jax.textfiles import read_json

# llama.cpp token types (tokenizer.ggml.token_type)
_CONTROL, _USER_DEFINED = 3, 4
# How Llama 3's vocabulary was split into words before its merges were learned.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLIT_BY_GGUF_PRE = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT}


class Tokenizer:
    """Encodes prompts, renders chat messages, decodes generated ids."""

    def __init__(self, backend: tokenizers.Tokenizer, chat_template: str | None,
                 bos_token: str | None, eos_token: str | None):
        self.backend = backend
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.eos_token = eos_token

    @property
    def eos_token_id(self) -> int | None:
        return None if self.eos_token is None else self.backend.token_to_id(self.eos_token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=True)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        """Ids of the conversation with the assistant's turn opened, as transformers renders it."""
        if not self.chat_template:
            raise UserError("this checkpoint has no chat template; drop --chat")

        def raise_exception(message):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            text = env.from_string(self.chat_template).render(
                messages=messages, add_generation_prompt=True,
                bos_token=self.bos_token or "", eos_token=self.eos_token or "")
        except TemplateError as e:
            raise UserError(f"the checkpoint's chat template refused the conversation: {e}") from None
        # The template writes the special tokens itself.
        return self.encode(text, add_special_tokens=False)

    @classmethod
    def from_hf_dir(cls, directory: Path) -> "Tokenizer | None":
        """None when the directory has no tokenizer.json (prompts must then be given as ids)."""
        path = directory / "tokenizer.json"
        if not path.exists():
            return None
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # the library raises plain Exception on a bad file
            raise UserError(f"{path}: cannot read the tokenizer ({e})") from None
        config = _read_json(directory / "tokenizer_config.json")
        template = config.get("chat_template")
        template_file = directory / "chat_template.jinja"  # where transformers 5 saves it
        if template is None and template_file.exists():
            template = template_file.read_text()
        if isinstance(template, list):  # several named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        return cls(backend, template, _token_text(config.get("bos_token")),
                   _token_text(config.get("eos_token")))

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any], source: str) -> "Tokenizer":
        kind = meta.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise UserError(f"{source}: GGUF tokenizer type {kind!r} is not handled (only byte-level "
                            "BPE, 'gpt2'); pass --prompt_ids, or use the Hugging Face directory")
        tokens: list[str] = meta["tokenizer.ggml.tokens"]
        token_types = meta.get("tokenizer.ggml.token_type") or [0] * len(tokens)
        spelling = _bytes_to_unicode()
        alphabet = set(spelling.values())
        # llama.cpp stores some tokens as plain text; the BPE model wants them in the byte alphabet.
        vocab = {(t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8"))): i
                 for i, t in enumerate(tokens)}
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None,
                                                  continuing_subword_prefix="",
                                                  end_of_word_suffix="", fuse_unk=False))
        split = _SPLIT_BY_GGUF_PRE.get(meta.get("tokenizer.ggml.pre"))
        if split is None:
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        else:
            backend.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        backend.decoder = decoders.ByteLevel()
        backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                    for t, kind in zip(tokens, token_types)
                                    if kind == _CONTROL and set(t) <= alphabet])
        backend.add_tokens([AddedToken(t, normalized=False, special=False)
                            for t, kind in zip(tokens, token_types) if kind == _USER_DEFINED])

        def special(key):
            index = meta.get(f"tokenizer.ggml.{key}")
            return tokens[index] if index is not None and 0 <= index < len(tokens) else None

        bos = special("bos_token_id")
        if meta.get("tokenizer.ggml.add_bos_token", False) and bos is not None:
            backend.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                special_tokens=[(bos, meta["tokenizer.ggml.bos_token_id"])])
        return cls(backend, meta.get("tokenizer.chat_template"), bos, special("eos_token_id"))


def _read_json(path: Path) -> dict:
    """An optional JSON file: {} when it is absent."""
    return read_json(path) if path.exists() else {}


def _token_text(token) -> str | None:
    """tokenizer_config.json spells a special token as a string or as an AddedToken dict."""
    return token.get("content") if isinstance(token, dict) else token


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character (the byte-level BPE alphabet)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


class IncrementalDecoder:
    """Turns ids arriving one by one into text pieces, holding back a half-finished UTF-8 character.

    Decoding the whole sequence each time (not token by token) keeps spaces and multi-byte
    characters that span tokens right.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # the rest of this character is still to come
            return ""
        piece, self.emitted = text[len(self.emitted):], text
        return piece
