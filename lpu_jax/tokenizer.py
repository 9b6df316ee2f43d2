"""Text <-> token ids, and the chat template, from what the checkpoint ships.

Built on the `tokenizers` library alone: transformers is not imported at run time (it is slow to
import and pulls in torch when torch is installed). A Hugging Face directory gives tokenizer.json and
tokenizer_config.json; a GGUF file gives llama.cpp's `tokenizer.ggml.*` metadata, rebuilt here into
the same byte-level BPE that transformers builds from it.
"""

from __future__ import annotations

import re
import signal
import threading
from pathlib import Path
from typing import Any, Sequence

import tokenizers
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

from lpu_jax.errors import UserError
from lpu_jax.schema import Fields
from lpu_jax.textfiles import read_json, read_text

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
        try:
            return self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        except Exception as e:  # the library raises plain Exception on a broken tokenizer
            raise UserError(f"the checkpoint's tokenizer cannot encode the prompt ({e})") from None

    def decode(self, ids: Sequence[int]) -> str:
        try:
            return self.backend.decode(list(ids), skip_special_tokens=True)
        except Exception as e:
            raise UserError(f"the checkpoint's tokenizer cannot decode ({e})") from None

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        """Ids of the conversation with the assistant's turn opened, as transformers renders it."""
        if not self.chat_template:
            raise UserError("this checkpoint has no chat template; drop --chat")

        try:
            text = render_bounded(self.chat_template, messages=messages,
                                  add_generation_prompt=True, bos_token=self.bos_token or "",
                                  eos_token=self.eos_token or "")
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
        config_path = directory / "tokenizer_config.json"
        config = read_json(config_path) if config_path.exists() else {}
        if not isinstance(config, dict):
            raise UserError(f"{config_path}: expected a JSON object")
        template = _chat_template(config.get("chat_template"), str(config_path))
        template_file = directory / "chat_template.jinja"  # where transformers 5 saves it
        if template is None and template_file.exists():
            template = read_text(template_file)
        return cls(backend, template, _token_text(config, "bos_token", config_path),
                   _token_text(config, "eos_token", config_path))

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any], source: str) -> "Tokenizer":
        kind = meta.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise UserError(f"{source}: GGUF tokenizer type {kind!r} is not handled (only byte-level "
                            "BPE, 'gpt2'); pass --prompt_ids, or use the Hugging Face directory")
        tokens = meta.get("tokenizer.ggml.tokens")
        if not (isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens)):
            raise UserError(f"{source}: GGUF metadata tokenizer.ggml.tokens must be a list of "
                            "strings")
        token_types = meta.get("tokenizer.ggml.token_type") or [0] * len(tokens)
        merges = meta.get("tokenizer.ggml.merges", [])
        if not (isinstance(token_types, list) and len(token_types) == len(tokens)
                and isinstance(merges, list) and all(isinstance(m, str) for m in merges)):
            raise UserError(f"{source}: GGUF metadata tokenizer.ggml.token_type must list one "
                            "type per token and tokenizer.ggml.merges be a list of strings")
        fields = Fields(meta, f"{source}: GGUF metadata")
        ids = {key: fields.integer(f"tokenizer.ggml.{key}", None, low=0, high=len(tokens) - 1)
               for key in ("bos_token_id", "eos_token_id")}
        template = fields.text("tokenizer.chat_template", None)
        spelling = _bytes_to_unicode()
        alphabet = set(spelling.values())
        # llama.cpp stores some tokens as plain text; the BPE model wants them in the byte alphabet.
        vocab = {(t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8"))): i
                 for i, t in enumerate(tokens)}
        if not all(" " in m for m in merges):
            raise UserError(f"{source}: GGUF metadata tokenizer.ggml.merges must be pairs "
                            "'left right'")
        merges = [tuple(m.split(" ", 1)) for m in merges]
        try:
            backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None,
                                                      continuing_subword_prefix="",
                                                      end_of_word_suffix="", fuse_unk=False))
        except Exception as e:  # e.g. a merge of tokens the vocabulary lacks
            raise UserError(f"{source}: GGUF tokenizer cannot be built ({e})") from None
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
            return None if ids[key] is None else tokens[ids[key]]

        bos = special("bos_token_id")
        if fields.flag("tokenizer.ggml.add_bos_token", False) and bos is not None:
            backend.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                special_tokens=[(bos, ids["bos_token_id"])])
        return cls(backend, template, bos, special("eos_token_id"))


def _chat_template(value, source: str) -> str | None:
    """tokenizer_config.json's chat_template: a string, or a list of named templates (the one
    named "default" is taken)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(t, dict) and isinstance(t.get("template"), str)
                                       for t in value):
        return next((t["template"] for t in value if t.get("name") == "default"), None)
    raise UserError(f"{source}: chat_template must be a string or a list of "
                    f'{{"name", "template"}} objects, got {type(value).__name__}')


def _token_text(config: dict, key: str, source: Path) -> str | None:
    """tokenizer_config.json spells a special token as a string or as an AddedToken dict."""
    token = config.get(key)
    if isinstance(token, dict):
        token = token.get("content")
    if token is not None and not isinstance(token, str):
        raise UserError(f"{source}: {key} must be a string or an object with a string "
                        f"'content', got {token!r}")
    return token


class _TemplateTimeout(TemplateError):
    pass


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles `~` to the environment's bounded_join instead of jinja2's plain join."""

    def visit_Concat(self, node, frame) -> None:
        self.write("environment.bounded_join((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """jinja2's sandbox, with *, **, %, + and ~ refused when their result would be huge (one
    expression could otherwise ask for gigabytes before the timer can stop it)."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset(["*", "**", "%", "+"])

    def bounded_join(self, values) -> str:
        text = "".join(map(str, values))
        if len(text) > MAX_TEMPLATE_TEXT:
            raise TemplateError("a ~ join is too long for a chat template")
        return text

    def call_binop(self, context, operator, left, right):
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool)
                      for v in (left, right))
        if operator == "**" and numbers and abs(right) > 64 and abs(left) > 1:
            raise TemplateError(f"{left} ** {right} is too big for a chat template")
        if operator == "*" and not numbers:
            count = right if isinstance(right, int) else left
            sized = left if isinstance(right, int) else right
            if isinstance(count, int) and hasattr(sized, "__len__") and (
                    count * max(len(sized), 1) > MAX_TEMPLATE_REPEAT):
                raise TemplateError("a repeated string or list is too long for a chat template")
        if operator == "+" and hasattr(left, "__len__") and hasattr(right, "__len__") and (
                len(left) + len(right) > MAX_TEMPLATE_TEXT):
            raise TemplateError("a joined string or list is too long for a chat template")
        if operator == "%" and isinstance(left, str) and any(
                int(width) > MAX_TEMPLATE_REPEAT for width in re.findall(r"%[-+ #0]*(\d+)", left)):
            raise TemplateError("a %-format width is too large for a chat template")
        return super().call_binop(context, operator, left, right)


MAX_TEMPLATE_SECONDS = 5.0
MAX_TEMPLATE_TEXT = 10_000_000
MAX_TEMPLATE_REPEAT = 100_000  # items or characters one * or %-width may make


def render_bounded(template: str, **values) -> str:
    """Render a chat template in jinja2's sandbox, bounded in time (in the main thread, where
    signals are delivered) and in output; a template that runs away fails with TemplateError."""
    def raise_exception(message):
        raise TemplateError(message)

    env = _BoundedSandbox(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    timed = threading.current_thread() is threading.main_thread()
    if timed:
        def stop(signum, frame):
            raise _TemplateTimeout(f"it ran for more than {MAX_TEMPLATE_SECONDS:g} s")

        previous = signal.signal(signal.SIGALRM, stop)
        outer = signal.setitimer(signal.ITIMER_REAL, MAX_TEMPLATE_SECONDS, 0.5)
    try:
        text = env.from_string(template).render(**values)
    except TemplateError:
        raise
    except (RecursionError, MemoryError, ArithmeticError, TypeError, ValueError,
            AttributeError, LookupError) as e:
        raise TemplateError(f"{type(e).__name__}: {e}") from None
    finally:
        if timed:  # the caller's own timer, if it had one, carries on
            signal.setitimer(signal.ITIMER_REAL, *outer)
            signal.signal(signal.SIGALRM, previous)
    if len(text) > MAX_TEMPLATE_TEXT:
        raise TemplateError(f"it wrote {len(text):,} characters")
    return text


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


class ByteTokenizer:
    """Text as its UTF-8 bytes, byte b as token id b: for models with no vocabulary of their own
    (random weights) of at least 256 tokens, so text prompts still run. Ids from 256 on decode
    to nothing."""

    chat_template = None
    eos_token_id = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        raise UserError("random weights come with no chat template; drop --chat")
