"""A word-level tokenizer built from a dataset's captions; it saves as plain lists inside a weights_only checkpoint."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from ldm.errors import UserError

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(len(SPECIAL_TOKENS))
WORD = re.compile(r"\w+")


def split_words(text: str) -> list[str]:
    """Lower-cased runs of letters and digits; punctuation and whitespace separate words."""
    return WORD.findall(text.lower())


@dataclass(frozen=True)
class WordTokenizer:
    """Maps a caption to <bos> words <eos> <pad>... of exactly max_tokens ids; unknown words become <unk>."""

    words: tuple[str, ...]
    max_tokens: int

    def __post_init__(self) -> None:
        if self.max_tokens < 2:
            raise UserError(f"text max_tokens={self.max_tokens} leaves no room for <bos> and <eos>; allowed: >= 2")

    @classmethod
    def build(cls, captions: Iterable[str], max_tokens: int) -> WordTokenizer:
        """Vocabulary of every caption word, most frequent first (ties alphabetical, so the order is reproducible)."""
        counts = Counter(word for caption in captions for word in split_words(caption))
        return cls(tuple(sorted(counts, key=lambda word: (-counts[word], word))), max_tokens)

    @cached_property
    def _ids(self) -> dict[str, int]:
        return {word: i for i, word in enumerate(SPECIAL_TOKENS + self.words)}

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + len(self.words)

    def encode(self, captions: list[str]) -> torch.Tensor:
        """LongTensor (B, max_tokens); words beyond max_tokens - 2 are cut."""
        ids = torch.full((len(captions), self.max_tokens), PAD_ID, dtype=torch.long)
        for row, caption in enumerate(captions):
            words = split_words(caption)[: self.max_tokens - 2]
            tokens = [BOS_ID, *(self._ids.get(word, UNK_ID) for word in words), EOS_ID]
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return ids

    def decode(self, ids: torch.Tensor) -> list[str]:
        """The words between <bos> and <eos> of each row, space-joined (unknown words read `<unk>`)."""
        vocabulary = SPECIAL_TOKENS + self.words
        texts = []
        for row in ids.tolist():
            words = row[1: row.index(EOS_ID)] if EOS_ID in row else row[1:]
            texts.append(" ".join(vocabulary[i] for i in words))
        return texts

    def to_dict(self) -> dict[str, Any]:
        return {"words": list(self.words), "max_tokens": self.max_tokens}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> WordTokenizer:
        words, max_tokens = state.get("words"), state.get("max_tokens")
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words) or not isinstance(max_tokens, int):
            raise UserError(f"saved tokenizer needs 'words' (a list of str) and 'max_tokens' (an int); "
                            f"got keys {sorted(state)}")
        return cls(tuple(words), max_tokens)
