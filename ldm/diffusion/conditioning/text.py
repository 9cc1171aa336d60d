"""`text`: a small transformer over word tokens, trained from scratch with the denoiser (LDM's text models)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

import torch
from torch import nn

from ldm.diffusion.conditioning.base import (
    Batch,
    Condition,
    ConditionInputs,
    Conditioner,
    DatasetInfo,
    DatasetSummary,
    EvaluationConditions,
    LatentEncoder,
    SplitSource,
    training_items,
)
from ldm.diffusion.tokenizer import PAD_ID, WordTokenizer
from ldm.errors import ConfigError, DataError

if TYPE_CHECKING:
    from ldm.config import DiffusionConfig, Split, TextEncoderConfig

POSITION_INIT_STD = 0.02
TEXT_FF_MULT = 4


class TextEncoder(Conditioner, kind="text"):
    """Per-token context from a caption; the null condition is the empty caption.

    Missing prompts of a generation request are drawn from the training captions, with their frequencies.
    """

    needs = "caption"
    accepts = frozenset({"prompts"})
    labels_scored = True  # a caption's label, where the dataset has labels

    def __init__(self, tokenizer: WordTokenizer, cfg: TextEncoderConfig, context_dim: int) -> None:
        super().__init__()
        if context_dim % cfg.heads:
            raise ConfigError(f"diffusion.text.heads={cfg.heads} must divide unet.context_dim={context_dim}")
        if tokenizer.max_tokens != cfg.max_tokens:
            raise ConfigError(f"the saved tokenizer has max_tokens={tokenizer.max_tokens} but "
                              f"diffusion.text.max_tokens={cfg.max_tokens}; they must agree")
        self.tokenizer = tokenizer
        self.context_dim = context_dim
        self.token_embedding = nn.Embedding(tokenizer.vocab_size, context_dim)
        self.position_embedding = nn.Parameter(torch.randn(cfg.max_tokens, context_dim) * POSITION_INIT_STD)
        layer = nn.TransformerEncoderLayer(context_dim, cfg.heads, TEXT_FF_MULT * context_dim, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(context_dim)

    @classmethod
    def build(cls, cfg: DiffusionConfig, info: DatasetInfo) -> Self:
        tokenizer = info.tokenizer
        if tokenizer is None:
            if not info.captions:
                raise DataError("diffusion.conditioning='text' needs captions; the dataset provides none")
            tokenizer = WordTokenizer.build(info.captions, cfg.text.max_tokens)
        return cls(tokenizer, cfg.text, cfg.unet.context_dim)

    def forward(self, prompts: list[str]) -> Condition:
        tokens = self.tokenizer.encode(prompts).to(self.token_embedding.weight.device)
        h = self.token_embedding(tokens) + self.position_embedding
        h = self.encoder(h, src_key_padding_mask=tokens == PAD_ID)
        return {"context": self.final_norm(h)}

    def condition(self, inputs: ConditionInputs, encode: LatentEncoder) -> Condition | None:
        assert inputs.prompts is not None  # completed or taken from a batch
        return self(inputs.prompts)

    def null(self, batch_size: int) -> Condition | None:
        return self([""] * batch_size)

    def inputs_from_batch(self, batch: Batch, count: int | None = None) -> ConditionInputs:
        return ConditionInputs(prompts=list(batch["caption"][:count]))

    def drawn_inputs(self, n: int, inputs: ConditionInputs, dataset: DatasetSummary,
                     generator: torch.Generator | None) -> ConditionInputs:
        if inputs.prompts is not None:
            return inputs
        weights = torch.tensor(dataset.caption_counts, dtype=torch.float64)
        picks = torch.multinomial(weights, n, replacement=True, generator=generator).tolist()
        return ConditionInputs(prompts=[dataset.captions[i] for i in picks])

    def evaluation_conditions(self, n: int, split: SplitSource, reference_split: Split,
                              generator: torch.Generator) -> EvaluationConditions:
        train, picks = training_items(split, n, generator)
        assert train.captions is not None  # validated: text conditioning needs captions
        # A caption's label is what its samples should show (the conditioning accuracy).
        labels = train.labels[picks] if train.labels is not None else None
        return EvaluationConditions(ConditionInputs(prompts=[train.captions[int(i)] for i in picks]),
                                    target_labels=labels)

    def grid_captions(self, inputs: ConditionInputs, dataset: DatasetSummary) -> list[str] | None:
        return inputs.prompts

    def saved_state(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer.to_dict()}
