"""Reading the model's answer: tokenise prompts, batch them, and take the logits at the answer position.

`answer_logits` is the single place that knows where the answer position is (last prompt token for causal
models, first decoder step for seq2seq); training, scoring, distillation and JSD all go through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from e2urec.errors import E2URecError, NonFinite
from e2urec.model.backbone import Backbone, Kind


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_length: int | None = None
) -> list[list[int]]:
    """Token ids per prompt, unpadded; too-long prompts lose their start, never the question at the end."""
    if not prompts:
        return []
    if max_length is None:
        return tokenizer(list(prompts))["input_ids"]
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        return tokenizer(list(prompts), truncation=True, max_length=max_length)["input_ids"]
    finally:
        tokenizer.truncation_side = side


def collate(backbone: Backbone, ids_list: Sequence[Sequence[int]]) -> dict[str, Tensor]:
    """Pad a batch to its longest prompt.

    Causal: left padding, so the answer position is the last column for every row, with position ids that
    restart at each row's first real token (as `generate` does), so padding cannot shift absolute positions.
    Seq2seq: right-padded encoder input and a one-step decoder input holding the start token.
    """
    if not ids_list or any(len(ids) == 0 for ids in ids_list):
        raise E2URecError("collate: every prompt in a batch needs at least one token")
    pad_id = backbone.tokenizer.pad_token_id
    width = max(len(ids) for ids in ids_list)
    input_ids = torch.full((len(ids_list), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids_list), width), dtype=torch.long)
    causal = backbone.kind == "causal"
    for row, ids in enumerate(ids_list):
        cols = slice(width - len(ids), width) if causal else slice(0, len(ids))
        input_ids[row, cols] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[row, cols] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if causal:
        batch["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    else:
        start = backbone.model.config.decoder_start_token_id
        if start is None:
            raise E2URecError(f"backbone {backbone.name!r}: its config has no decoder_start_token_id")
        batch["decoder_input_ids"] = torch.full((len(ids_list), 1), start, dtype=torch.long)
    return batch


# What `collate` produces for the model; anything else in a batch (targets, indices) is the caller's.
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "decoder_input_ids")


def answer_logits(model: PreTrainedModel, batch: dict[str, Tensor], kind: Kind) -> Tensor:
    """Full-vocabulary logits [B, V] at the answer position; causal models compute only that position.

    Batches may carry more than model inputs (targets, cached teacher tensors); only inputs are passed on.
    """
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    if kind == "causal":
        return model(**inputs, logits_to_keep=1, use_cache=False).logits[:, -1]
    return model(**inputs, use_cache=False).logits[:, 0]


def p_yes_from_logits(logits: Tensor, answer_ids: tuple[int, int] | Tensor) -> Tensor:
    """P(yes) as the softmax over just the two answer tokens' logits (the paper's definition)."""
    pair = torch.as_tensor(answer_ids, dtype=torch.long, device=logits.device)
    return torch.softmax(logits.index_select(-1, pair).float(), dim=-1)[:, 1]


class PromptSet(Dataset):
    """Tokenised prompts with their answer-token targets and optional per-sample tensors (e.g. cached
    teacher distributions), addressed by position so a batch can carry anything aligned with it."""

    def __init__(self, ids: Sequence[list[int]], targets: np.ndarray | None = None,
                 extras: dict[str, Tensor] | None = None):
        self.ids = list(ids)
        self.targets = np.zeros(len(self.ids), dtype=np.int64) if targets is None else np.asarray(targets, np.int64)
        self.extras = extras or {}
        if len(self.ids) != len(self.targets):
            raise ValueError("ids and targets differ in length")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> int:
        return i


def collator(backbone: Backbone, data: PromptSet) -> Callable[[list[int]], dict[str, Tensor]]:
    """Batch maker for a DataLoader over a PromptSet: padded inputs plus target, position and extras."""

    def make(positions: list[int]) -> dict[str, Tensor]:
        batch = collate(backbone, [data.ids[p] for p in positions])
        index = torch.as_tensor(positions, dtype=torch.long)
        batch["target"] = torch.as_tensor(data.targets[positions])
        batch["index"] = index
        for key, value in data.extras.items():
            batch[key] = value[index]
        return batch

    return make


def length_sorted_batches(data: PromptSet, batch_size: int) -> list[list[int]]:
    """Batches of similar length, longest first: little padding (wasted compute), and an out-of-memory
    error shows up at once rather than at the end."""
    if batch_size < 1:
        raise E2URecError(f"batch_size must be at least 1, got {batch_size}")
    order = np.argsort([-len(ids) for ids in data.ids], kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def per_sample(
    backbone: Backbone,
    data: PromptSet,
    fn: Callable[[dict[str, Tensor]], Tensor],
    batch_size: int = 64,
    accelerator: Accelerator | None = None,
    desc: str = "scoring",
    progress: bool = True,
) -> np.ndarray:
    """`fn(batch)` → one value (or row) per sample, for every sample of `data`, in `data` order.

    The one batched inference path (scoring, validation loss, teacher caches, forgetting metrics). Under
    several processes each scores a share of the batches; results are gathered and de-duplicated by sample
    position (accelerate repeats a few samples to even out shards), and the count is checked.
    """
    if len(data) == 0:
        raise E2URecError("nothing to score: the prompt list is empty")
    loader = DataLoader(data, batch_sampler=length_sorted_batches(data, batch_size),
                        collate_fn=collator(backbone, data))
    if accelerator is not None:
        loader = accelerator.prepare(loader)
    main = accelerator is None or accelerator.is_local_main_process
    model, device = backbone.model, backbone.device
    was_training = model.training
    model.eval()
    positions: list[Tensor] = []
    values: list[Tensor] = []
    # Under the accelerator's precision (bf16 autocast on a GPU, as in training); results stay on the device and
    # come back in one copy at the end, so the GPU never waits for the host between batches.
    precision = accelerator.autocast() if accelerator is not None else contextlib.nullcontext()
    try:
        with precision:
            for batch in tqdm(loader, desc=desc, leave=False, disable=not (main and progress)):
                if accelerator is None:
                    batch = {k: v.to(device) for k, v in batch.items()}
                positions.append(batch["index"])
                values.append(fn(batch).float())
    finally:
        model.train(was_training)
    index, stacked = torch.cat(positions).cpu().numpy(), torch.cat(values).cpu().numpy()
    if accelerator is not None and accelerator.num_processes > 1:
        parts = gather_object([(index, stacked)])
        index, stacked = np.concatenate([i for i, _ in parts]), np.concatenate([v for _, v in parts])
    bad = int((~np.isfinite(stacked)).reshape(len(stacked), -1).any(1).sum())
    if bad:
        raise NonFinite(f"{backbone.label}: {bad} of {len(stacked)} samples scored NaN or infinite ({desc}): the "
                        "model's weights or its arithmetic have overflowed, so it cannot be scored. Retrain or "
                        "restore it; a model trained in bf16 may score in full precision with E2UREC_PRECISION=fp32")
    first = np.unique(index, return_index=True)[1]
    if len(first) != len(data):
        raise RuntimeError(f"scored {len(first)} distinct samples of {len(data)}")
    out = np.empty((len(data),) + stacked.shape[1:], dtype=stacked.dtype)
    out[index[first]] = stacked[first]
    return out


def over_prompts(backbone: Backbone, prompts: Sequence[str], fn: Callable[[Tensor], Tensor], batch_size: int = 32,
                 max_length: int | None = None, progress: bool = False) -> np.ndarray:
    """`fn(answer-position logits)` per prompt, in input order."""
    data = PromptSet(encode_prompts(backbone.tokenizer, prompts, max_length))
    return per_sample(backbone, data, lambda b: fn(answer_logits(backbone.model, b, backbone.kind)), batch_size,
                      progress=progress)


def score(backbone: Backbone, prompts: Sequence[str], batch_size: int = 32, max_length: int | None = None,
          progress: bool = False) -> np.ndarray:
    """P(yes) per prompt, in input order."""
    return over_prompts(backbone, prompts, lambda z: p_yes_from_logits(z, backbone.answer_ids), batch_size,
                        max_length, progress)


def prompt_set(backbone: Backbone, rows: pd.DataFrame, max_length: int | None = None,
               prompts: list[str] | None = None) -> PromptSet:
    ids = encode_prompts(backbone.tokenizer, prompts if prompts is not None else rows["prompt"].tolist(),
                         max_length)
    targets = np.asarray(backbone.answer_ids)[rows["label"].to_numpy(dtype=int)]
    return PromptSet(ids, targets)


def per_sample_p_yes(backbone: Backbone, data: PromptSet, batch_size: int,
                     accelerator: Accelerator | None = None, model: torch.nn.Module | None = None,
                     progress: bool = True) -> np.ndarray:
    model = model if model is not None else backbone.model
    model.eval()
    yes = torch.as_tensor(backbone.answer_ids)
    return per_sample(backbone, data, lambda b: p_yes_from_logits(answer_logits(model, b, backbone.kind), yes),
                      batch_size, accelerator, desc="p(yes)", progress=progress)
