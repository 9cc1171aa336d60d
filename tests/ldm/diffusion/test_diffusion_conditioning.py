"""Conditioners: outputs per type, null conditions, condition dropout and the builder's errors."""

import subprocess
import sys
from typing import get_args

import pytest
import torch

from ldm.config import Conditioning, DiffusionConfig, TextEncoderConfig, UNetConfig
from ldm.diffusion.conditioning import (
    CONDITIONERS,
    ClassEmbedder,
    ConcatConditioner,
    ConditionInputs,
    DatasetInfo,
    MaskedLatent,
    TextEncoder,
    Unconditional,
    build_conditioner,
    conditioner_class,
)
from ldm.diffusion.tokenizer import PAD_ID, WordTokenizer
from ldm.errors import ConfigError, DataError

CAPTIONS = ["a red circle", "a blue square", "two green triangles on the left"]
SMALL_UNET = UNetConfig(base_channels=8, context_dim=16)


def config(conditioning: str, **text: int) -> DiffusionConfig:
    return DiffusionConfig(conditioning=conditioning, unet=SMALL_UNET, text=TextEncoderConfig(**text))


def test_every_conditioning_value_has_one_registered_class() -> None:
    assert set(CONDITIONERS) == set(get_args(Conditioning))
    for kind, cls in CONDITIONERS.items():
        assert conditioner_class(kind) is cls and cls.kind == kind


def test_each_type_needs_the_item_its_batches_give() -> None:
    batch = {"image": torch.zeros(2, 1, 8, 8), "label": torch.tensor([1, 2]), "caption": ["a", "b"],
             "mask": torch.ones(2, 1, 8, 8)}
    latent_shape = (1, 8, 8)
    for kind, cls in CONDITIONERS.items():
        conditioner = build_conditioner(config(kind), DatasetInfo(num_classes=3, captions=["a", "b"],
                                                                  latent_shape=latent_shape))
        given = conditioner.inputs_from_batch(batch).given()
        assert set(given) == set(cls.accepts), kind
        wanted = {"labels": "label", "prompts": "caption", "masks": "mask"}
        assert {wanted[name] for name in given if name in wanted} == ({cls.needs} if cls.needs else set()), kind


def test_none_conditions_on_nothing() -> None:
    conditioner = build_conditioner(config("none"), DatasetInfo())
    assert isinstance(conditioner, Unconditional) and list(conditioner.parameters()) == []
    assert conditioner.null(2) is None and conditioner.condition(ConditionInputs(), lambda x: x) is None
    assert conditioner.context_dim is None and conditioner.extra_in_channels(4) == 0


def test_class_tokens_and_the_learned_null_token() -> None:
    embedder = build_conditioner(config("class"), DatasetInfo(num_classes=10))
    assert isinstance(embedder, ClassEmbedder) and embedder.context_dim == 16 and embedder.extra_in_channels(4) == 0
    context = embedder(torch.tensor([3, 3, 7]))["context"]
    assert context.shape == (3, 1, 16)
    torch.testing.assert_close(context[:, 0], embedder.embedding.weight[[3, 3, 7]])
    null = embedder.null(2)["context"]
    torch.testing.assert_close(null[:, 0], embedder.embedding.weight[[10, 10]])
    assert null.requires_grad  # the null token is learned


def test_text_context_is_per_token_and_independent_of_the_batch() -> None:
    torch.manual_seed(0)
    encoder = build_conditioner(config("text", max_tokens=8, layers=1, heads=2), DatasetInfo(captions=CAPTIONS))
    assert isinstance(encoder, TextEncoder)
    context = encoder(CAPTIONS)["context"]
    assert context.shape == (3, 8, 16)
    torch.testing.assert_close(encoder(CAPTIONS[:1])["context"], context[:1], atol=1e-5, rtol=1e-5)
    # Padding is masked: changing the <pad> embedding leaves <bos> a red circle <eos> as it was.
    with torch.no_grad():
        encoder.token_embedding.weight[PAD_ID] += torch.randn(16)
    padded = encoder(CAPTIONS[:1])["context"]
    torch.testing.assert_close(padded[:, :5], context[:1, :5], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(padded[:, 5:], context[:1, 5:])
    torch.testing.assert_close(encoder.null(2)["context"], encoder(["", ""])["context"])
    # Unknown words share one token.
    torch.testing.assert_close(encoder(["a zebra"])["context"], encoder(["a giraffe"])["context"])
    assert not torch.allclose(encoder(["a red circle"])["context"], encoder(["a blue circle"])["context"])


def test_text_encoder_reuses_a_saved_tokenizer() -> None:
    tokenizer = WordTokenizer.build(["only these words"], max_tokens=8)
    encoder = build_conditioner(config("text", max_tokens=8, heads=2), DatasetInfo(captions=None, tokenizer=tokenizer))
    assert encoder.tokenizer is tokenizer and encoder.token_embedding.num_embeddings == 4 + 3


def test_concat_is_the_masked_latent_and_the_area_downsampled_mask() -> None:
    conditioner = build_conditioner(config("concat"), DatasetInfo(latent_shape=(3, 8, 8)))
    assert isinstance(conditioner, ConcatConditioner)
    assert conditioner.context_dim is None and conditioner.extra_in_channels(3) == 4
    latent = torch.randn(2, 3, 8, 8)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, :16, :16] = 1  # top-left quadrant
    mask[:, :, 30:, 30:] = 1  # a 2x2 hole: a quarter of the last 4x4 latent cell
    concat = conditioner(MaskedLatent(latent=latent, mask=mask))["concat"]
    assert concat.shape == (2, 4, 8, 8)
    torch.testing.assert_close(concat[:, :3], latent)
    expected = torch.zeros(2, 8, 8)
    expected[:, :4, :4] = 1
    expected[:, 7, 7] = 0.25
    torch.testing.assert_close(concat[:, 3], expected)
    assert torch.equal(conditioner.null(5)["concat"], torch.zeros(5, 4, 8, 8))


@pytest.mark.parametrize("p_uncond", [0.0, 0.25, 1.0])
def test_condition_dropout_replaces_exactly_the_marked_items(p_uncond: float) -> None:
    embedder = ClassEmbedder(num_classes=10, context_dim=16)
    n = 400
    cond = embedder(torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(0)))
    marked = torch.rand(n, generator=torch.Generator().manual_seed(1)) < p_uncond
    dropped = embedder.drop_where(cond, marked)["context"]
    is_null = (dropped == embedder.null(1)["context"]).all(dim=(1, 2))
    kept = (dropped == cond["context"]).all(dim=(1, 2))
    assert torch.equal(is_null, marked) and torch.equal(kept, ~marked)


def test_concat_dropout_zeros_whole_items() -> None:
    conditioner = ConcatConditioner((2, 4, 4))
    cond = conditioner(MaskedLatent(latent=torch.randn(64, 2, 4, 4) + 5, mask=torch.ones(64, 1, 16, 16)))
    marked = torch.rand(64, generator=torch.Generator().manual_seed(0)) < 0.5
    dropped = conditioner.drop_where(cond, marked)["concat"]
    zero_items = (dropped == 0).flatten(1).all(dim=1)
    assert torch.equal(zero_items, marked)
    torch.testing.assert_close(dropped[~zero_items], cond["concat"][~zero_items])


def test_builder_errors_name_the_bad_value() -> None:
    with pytest.raises(DataError, match="conditioning='class' needs labelled data; the dataset has num_classes=0"):
        build_conditioner(config("class"), DatasetInfo(num_classes=0))
    with pytest.raises(DataError, match="conditioning='text' needs captions"):
        build_conditioner(config("text"), DatasetInfo())
    saved = WordTokenizer.build(CAPTIONS, max_tokens=8)
    with pytest.raises(ConfigError, match="saved tokenizer has max_tokens=8 but diffusion.text.max_tokens=16"):
        build_conditioner(config("text"), DatasetInfo(tokenizer=saved))
    with pytest.raises(ValueError, match="needs DatasetInfo.latent_shape"):
        build_conditioner(config("concat"), DatasetInfo())


def test_the_conditioners_import_no_config_so_config_can_ask_them_without_a_cycle() -> None:
    probe = ("import sys, ldm.diffusion.conditioning; "
             "print(sorted(m for m in sys.modules if m == 'ldm.config' or m.startswith('ldm.data')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
