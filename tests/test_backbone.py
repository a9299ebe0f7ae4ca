"""Backbones load by name, offline, seeded, with answer token ids derived from their tokenizers."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from e2urec.errors import E2URecError
from e2urec.io import write_json_atomic
from e2urec.model.backbone import BACKBONES, RECORD, Backbone, answer_token_ids, load_backbone
from e2urec.model.builtins import smollm2 as smollm2_mod
from e2urec.model.builtins import tiny as tiny_mod
from e2urec.model.scoring import answer_logits, collate, encode_prompts


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_is_seeded_and_leaves_global_rng_alone(tiny: Backbone) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = load_backbone("tiny", seed=0)
    assert torch.equal(torch.rand(3), expected)
    assert _same_weights(again.model, tiny.model)
    assert not _same_weights(load_backbone("tiny", seed=1).model, tiny.model)
    assert tiny.kind == "causal" and tiny.name == "tiny"
    assert tiny.model.config.vocab_size == len(tiny.tokenizer) == 49152
    assert tiny.model.config.hidden_size == 128 and tiny.model.config.num_hidden_layers == 2


@pytest.mark.parametrize("fixture", ["tiny", "tiny_t5"])
def test_answer_ids_are_derived_and_distinct(fixture: str, request: pytest.FixtureRequest) -> None:
    bb: Backbone = request.getfixturevalue(fixture)
    no_id, yes_id = bb.answer_ids
    assert no_id != yes_id
    assert bb.tokenizer.decode([yes_id]).strip() == "Yes"
    assert bb.tokenizer.decode([no_id]).strip() == "No"
    assert bb.answer_ids == answer_token_ids(bb.tokenizer, bb.kind)
    assert bb.tokenizer.pad_token_id is not None
    assert bb.tokenizer.padding_side == ("left" if bb.kind == "causal" else "right")


def test_tiny_t5_builds_and_reuses_its_tokenizer_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2UREC_CACHE", str(tmp_path))
    first = load_backbone("tiny-t5", seed=0)
    assert first.kind == "seq2seq"
    assert 2000 <= len(first.tokenizer) <= 4000
    assert (tmp_path / "backbones" / "tiny-t5-tokenizer" / "tokenizer.json").is_file()

    def must_not_train(out: Path) -> None:
        raise AssertionError("the cached tokenizer should have been reused")

    monkeypatch.setattr(tiny_mod, "_train_tiny_t5_tokenizer", must_not_train)
    second = load_backbone("tiny-t5", seed=0)
    assert second.tokenizer.get_vocab() == first.tokenizer.get_vocab()
    assert _same_weights(first.model, second.model)
    monkeypatch.undo()
    monkeypatch.setenv("E2UREC_CACHE", str(tmp_path))
    monkeypatch.setattr(tiny_mod, "_TINY_T5_VOCAB", 2500)  # a changed recipe retrains the cached tokenizer
    assert len(load_backbone("tiny-t5").tokenizer) == 2500
    text = 'Héllo 日本 "Toy Story (1995)" (5 stars) ✓'
    ids = second.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert second.tokenizer.unk_token_id not in ids
    assert second.tokenizer.decode(ids) == text


def test_unknown_hub_id_offline_names_the_offline_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(E2URecError, match="hub could not be reached") as info:
        load_backbone("no-such-org/no-such-model")
    for choice in BACKBONES:
        assert f'"{choice}"' in str(info.value)
    assert "local folder" in str(info.value)


def test_missing_local_folder_is_reported_as_such(tmp_path: Path) -> None:
    with pytest.raises(E2URecError, match="no such folder"):
        load_backbone(str(tmp_path / "nothing-here"))


@pytest.mark.parametrize(("fixture", "kind"), [("tiny", "causal"), ("tiny_t5", "seq2seq")])
def test_local_folder_loads_with_the_right_kind(
    fixture: str, kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    saved: Backbone = request.getfixturevalue(fixture)
    saved.model.save_pretrained(tmp_path)
    saved.tokenizer.save_pretrained(tmp_path)
    loaded = load_backbone(str(tmp_path))
    assert loaded.kind == kind
    assert loaded.name == str(tmp_path)
    assert loaded.answer_ids == saved.answer_ids
    assert _same_weights(loaded.model, saved.model)


def _char_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE with no merges: one token per character, so " Yes" and " No" both start with a space."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(["<unk>", *sorted(alphabet)])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def _unk_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level vocabulary without Yes or No: both answers become <unk>."""
    backend = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "Answer": 1}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


@pytest.mark.parametrize(("make", "kind"), [(_char_tokenizer, "causal"), (_unk_tokenizer, "seq2seq")])
def test_answer_token_ids_rejects_a_shared_first_token(
    make: Callable[[], PreTrainedTokenizerFast], kind: str
) -> None:
    with pytest.raises(E2URecError, match="start with the same token"):
        answer_token_ids(make(), kind)


def test_answer_token_ids_rejects_unknown_kind(tiny: Backbone) -> None:
    with pytest.raises(E2URecError, match="unknown model kind"):
        answer_token_ids(tiny.tokenizer, "encoder")  # type: ignore[arg-type]


def test_corrupt_smollm2_cache_says_to_delete_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2UREC_CACHE", str(tmp_path))
    folder = tmp_path / "backbones" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"not the weights")
    write_json_atomic(folder / RECORD, {"model_sha256": "0" * 64})
    with pytest.raises(E2URecError, match="delete this folder") as info:
        load_backbone("smollm2-135m")
    assert str(folder) in str(info.value)


@pytest.mark.slow
def test_smollm2_loads_converts_faithfully_and_reloads_fast() -> None:
    first = load_backbone("smollm2-135m")
    tok = first.tokenizer
    assert first.kind == "causal"
    assert 134e6 < sum(p.numel() for p in first.model.parameters()) < 135e6
    assert tok(" Yes", add_special_tokens=False)["input_ids"] == [first.answer_ids[1]]
    assert tok(" No", add_special_tokens=False)["input_ids"] == [first.answer_ids[0]]

    start = time.perf_counter()
    second = load_backbone("smollm2-135m")
    assert time.perf_counter() - start < 5

    prompt = 'The user rated these movies:\n"Heat (1995)" (4 stars)\nWill the user like "Fargo (1996)"? Answer:'
    batch = collate(first, encode_prompts(tok, [prompt]))
    with torch.inference_mode():
        cached = answer_logits(second.model, batch, "causal")
        assert torch.equal(answer_logits(first.model, batch, "causal"), cached)
        gguf = smollm2_mod._smollm2_gguf()
        direct = smollm2_mod.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # Same weights bit for bit, but the GGUF tensors sit unaligned in memory, so BLAS takes other kernels.
        torch.testing.assert_close(answer_logits(direct.eval(), batch, "causal"), cached, atol=1e-4, rtol=0)
    assert _same_weights(direct, second.model)
