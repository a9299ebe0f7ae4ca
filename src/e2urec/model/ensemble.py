"""Sharded systems (SISA, RecEraser) as one model: every shard scores the batch and the outputs are
aggregated, so scoring, JSD and evaluation treat a system exactly like a single model."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import ModelOutput


class AttentionAggregator(nn.Module):
    """RecEraser-style attention over shard outputs: weight_s = softmax_s(vᵀ tanh(W f_s + b)), where f_s is
    shard s's pair of answer-token logits for the sample; learned on validation data."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.proj = nn.Linear(2, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)

    def forward(self, features: Tensor) -> Tensor:
        """features [S, ..., 2] → weights [S, ..., 1] summing to one over shards."""
        return torch.softmax(self.score(torch.tanh(self.proj(features))), dim=0)


class ShardEnsemble(nn.Module):
    """Shard models behind one forward: mean of shard logits (SISA) or learned attention (RecEraser)."""

    def __init__(self, shards: list[nn.Module], answer_ids: tuple[int, int],
                 aggregator: AttentionAggregator | None = None):
        super().__init__()
        self.shards = nn.ModuleList(shards)
        self.answer_ids = list(answer_ids)
        self.aggregator = aggregator

    @property
    def config(self):  # noqa: ANN201 - the shards' transformers config
        return self.shards[0].config

    def combine(self, logits: Tensor) -> Tensor:
        """[S, ..., V] shard logits → [..., V] system logits."""
        if self.aggregator is None:
            return logits.mean(0)
        weights = self.aggregator(logits[..., self.answer_ids].float()).to(logits.dtype)
        return (weights * logits).sum(0)

    def forward(self, **inputs: Tensor) -> ModelOutput:
        return ModelOutput(logits=self.combine(torch.stack([shard(**inputs).logits for shard in self.shards])))
