"""WordTokenizer: vocabulary order, encoding layout, round trips, unknown words and checkpoint storage."""

from pathlib import Path

import pytest
import torch

from ldm.diffusion.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, WordTokenizer
from ldm.errors import UserError
from ldm.io import atomic_torch_save, load_checkpoint

CAPTIONS = ["A red circle.", "a blue circle", "Two red squares, left"]


def test_vocabulary_is_ordered_by_frequency_then_alphabetically() -> None:
    tokenizer = WordTokenizer.build(CAPTIONS, max_tokens=8)
    assert tokenizer.words == ("a", "circle", "red", "blue", "left", "squares", "two")
    assert tokenizer.vocab_size == 4 + 7


def test_encoding_is_bos_words_eos_then_padding() -> None:
    tokenizer = WordTokenizer.build(CAPTIONS, max_tokens=6)
    ids = tokenizer.encode(["Red circle!", ""])
    assert ids.dtype == torch.long and ids.shape == (2, 6)
    red, circle = 4 + tokenizer.words.index("red"), 4 + tokenizer.words.index("circle")
    assert ids[0].tolist() == [BOS_ID, red, circle, EOS_ID, PAD_ID, PAD_ID]
    assert ids[1].tolist() == [BOS_ID, EOS_ID] + [PAD_ID] * 4


def test_decode_inverts_encode_up_to_case_and_punctuation() -> None:
    tokenizer = WordTokenizer.build(CAPTIONS, max_tokens=8)
    assert tokenizer.decode(tokenizer.encode(["Two RED squares, left.", "a circle"])) == ["two red squares left",
                                                                                          "a circle"]


def test_unknown_words_become_unk_and_long_captions_are_cut() -> None:
    tokenizer = WordTokenizer.build(CAPTIONS, max_tokens=5)
    ids = tokenizer.encode(["a purple zebra circle red"])
    assert ids[0].tolist() == [BOS_ID, 4 + tokenizer.words.index("a"), UNK_ID, UNK_ID, EOS_ID]
    assert tokenizer.decode(ids) == ["a <unk> <unk>"]


def test_tokenizer_survives_a_weights_only_checkpoint(tmp_path: Path) -> None:
    tokenizer = WordTokenizer.build(CAPTIONS, max_tokens=8)
    path = tmp_path / "tokenizer.pt"
    atomic_torch_save({"tokenizer": tokenizer.to_dict()}, path)
    restored = WordTokenizer.from_dict(load_checkpoint(path)["tokenizer"])
    assert restored == tokenizer
    assert torch.equal(restored.encode(CAPTIONS), tokenizer.encode(CAPTIONS))


def test_bad_tokenizer_settings_are_refused() -> None:
    with pytest.raises(UserError, match="max_tokens=1 leaves no room for <bos> and <eos>; allowed: >= 2"):
        WordTokenizer.build(CAPTIONS, max_tokens=1)
    with pytest.raises(UserError, match=r"'max_tokens' \(an int\); got keys \['words'\]"):
        WordTokenizer.from_dict({"words": ["a"]})
