"""Whisper's text tokens: ids to text (the model's vocabulary) and text to ids (its BPE merges).

Whisper uses GPT-2's byte-level BPE: text is cut into words (a word keeps the space before
it), each word's UTF-8 bytes are spelt in a 256-character alphabet, and the pairs of symbols
the merge list ranks first are joined until none is left. The vocabulary comes from
``vocabulary.txt`` (one token a line) or ``vocabulary.json``; the merges from
``tokenizer.json``, as ``ct2-transformers-converter`` copies it beside the model. A model
directory without ``tokenizer.json`` encodes text by the longest vocabulary token at each
point instead (prompts still work, a little less well). No tokenizer library is needed.
Plain code, no trio.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from pathlib import Path
from typing import Final

from .engine import EngineError

# GPT-2's pre-tokenizer, with \p{L} and \p{N} spelt for the standard library's re.
WORDS: Final = re.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
)
LONGEST_TOKEN: Final = 32  # symbols, for the fallback without merges


def _byte_symbols() -> dict[int, str]:
    """GPT-2's byte-level BPE alphabet: the character standing for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]  # fmt: skip
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


class Vocabulary:
    """The model's tokens, and its merges when it has them."""

    def __init__(self, tokens: list[str], merges: list[tuple[str, str]] | None = None) -> None:
        self.tokens = tokens
        self.ids = {token: i for i, token in enumerate(tokens)}
        self.symbols = _byte_symbols()
        self.bytes = {c: b for b, c in self.symbols.items()}
        self.ranks = {pair: i for i, pair in enumerate(merges)} if merges is not None else None
        self._word_ids = functools.lru_cache(maxsize=4096)(self._encode_word)

    @classmethod
    def load(cls, root: Path) -> Vocabulary:
        path = root / "vocabulary.json"
        try:
            if path.is_file():
                tokens = json.loads(path.read_text(encoding="utf-8"))
            else:
                tokens = (root / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
                if tokens and tokens[-1] == "":
                    tokens.pop()
            merges = _merges(root / "tokenizer.json")
        except (OSError, ValueError) as exc:
            msg = f"cannot read the Whisper vocabulary in {root}: {exc}"
            raise EngineError(msg) from exc
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            msg = f"the vocabulary in {root} is not a list of tokens"
            raise EngineError(msg)
        return cls(tokens, merges)

    def token_to_id(self, token: str) -> int | None:
        return self.ids.get(token)

    def decode(self, ids: list[int]) -> str:
        """Text tokens as text (a byte sequence cut inside a character gives U+FFFD)."""
        data = bytes(self.bytes.get(c, 0x3F) for i in ids for c in self.tokens[i])
        return data.decode("utf-8", errors="replace")

    def encode(self, text: str) -> list[int]:
        """*text* as token ids (a leading space belongs to the first word, as Whisper says
        words after the first)."""
        return [i for word in WORDS.findall(text) for i in self._word_ids(word)]

    def _encode_word(self, word: str) -> tuple[int, ...]:
        symbols = [self.symbols[b] for b in word.encode()]
        pieces = self._bpe(symbols) if self.ranks is not None else self._longest(symbols)
        return tuple(self.ids[p] for p in pieces if p in self.ids)

    def _bpe(self, parts: list[str]) -> list[str]:
        assert self.ranks is not None
        while len(parts) > 1:
            pairs = enumerate(itertools.pairwise(parts))
            found = [(rank, i) for i, pair in pairs if (rank := self.ranks.get(pair, -1)) >= 0]
            if not found:
                break
            _, i = min(found)
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        return parts

    def _longest(self, symbols: list[str]) -> list[str]:
        out, start = [], 0
        while start < len(symbols):
            for end in range(min(len(symbols), start + LONGEST_TOKEN), start, -1):
                piece = "".join(symbols[start:end])
                if piece in self.ids or end == start + 1:
                    out.append(piece)
                    start = end
                    break
        return out


def _merges(path: Path) -> list[tuple[str, str]] | None:
    """The BPE merges of a Hugging Face ``tokenizer.json``, in rank order (None: no file)."""
    if not path.is_file():
        return None
    model = json.loads(path.read_text(encoding="utf-8")).get("model", {})
    merges = []
    for merge in model.get("merges", []):
        first, second = merge.split(" ", 1) if isinstance(merge, str) else merge
        merges.append((first, second))
    return merges
