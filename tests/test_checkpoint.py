"""meta.json's one typed record: written and read through ModelMeta, old files still read, bad ones refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer

from e2urec.checkpoint import META_FORMAT, ModelMeta, load_model, read_meta, save_model, write_meta
from e2urec.errors import E2URecError
from e2urec.model.backbone import Backbone, load_backbone
from e2urec.model.lora import LORA_TARGETS, add_lora, full_weights, lora_config, lora_from_meta, lora_to_meta
from e2urec.training import make_trainable
from e2urec.unlearning.base import REGISTRY


def test_meta_round_trip_keeps_every_fact_and_adds_the_format(tmp_path: Path) -> None:
    meta = {"backbone": "tiny", "role": "original", "base": {"backbone": "tiny", "seed": 3},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targets": "attention"}, "config": {"lr": 1e-3},
            "train_seconds": 1.5}
    written = write_meta(tmp_path, meta, kind="causal")
    assert written == read_meta(tmp_path) == {**meta, "kind": "causal", "format": META_FORMAT}
    typed = ModelMeta.from_dict(written)
    assert typed.base == {"backbone": "tiny", "seed": 3} and typed.facts == {"role": "original",
                                                                            "config": {"lr": 1e-3},
                                                                            "train_seconds": 1.5}


def test_a_file_written_before_the_format_field_still_loads(tiny: Backbone, tmp_path: Path) -> None:
    save_model(tiny, tmp_path / "m", {"backbone": "tiny", "role": "original"})
    old = json.loads((tmp_path / "m" / "meta.json").read_text())
    del old["format"], old["lora"]
    (tmp_path / "m" / "meta.json").write_text(json.dumps(old))
    backbone, meta = load_model(tmp_path / "m")
    assert meta["role"] == "original" and meta["format"] == META_FORMAT and backbone.kind == tiny.kind


@pytest.mark.parametrize("bad, message", [({"format": META_FORMAT + 1}, "newer"), ({"format": "1"}, "newer"),
                                          ({"base": {"seed": 1}}, "base"), ({"base": "tiny"}, "base"),
                                          ({"lora": {"r": 4}}, "lora"),
                                          ({"lora": {"r": 4, "alpha": 8, "dropout": 0, "targets": "all"}}, "lora"),
                                          ({"lora": {"r": "4", "alpha": 8, "dropout": 0}}, "lora"),
                                          ({"lora": {"r": 4, "alpha": 8, "dropout": 0, "rank": 2}}, "lora")])
def test_bad_meta_is_refused_with_where_and_what(tmp_path: Path, bad: dict, message: str) -> None:
    (tmp_path / "meta.json").write_text(json.dumps({"backbone": "tiny", **bad}))
    with pytest.raises(E2URecError, match=message) as err:
        read_meta(tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(E2URecError, match=message):
        write_meta(tmp_path / "out", {"backbone": "tiny", **bad})
    assert not (tmp_path / "out").exists()


def test_a_folder_without_meta_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(E2URecError, match="no meta.json"):
        read_meta(tmp_path)


def lora_leaves(model: torch.nn.Module) -> set[str]:
    """The modules peft put LoRA layers on, by their last name."""
    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, LoraLayer)}


@pytest.mark.parametrize("targets", LORA_TARGETS)
def test_a_methods_lora_config_reaches_the_model(tiny: Backbone, targets: str) -> None:
    method = REGISTRY["e2urec"](REGISTRY["e2urec"].Config.from_options(
        {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "lora_targets": targets}))
    recipe = method.lora_config()
    assert isinstance(recipe, LoraConfig)
    backbone = load_backbone("tiny", seed=0)  # a fresh one: peft changes the model it wraps
    make_trainable(backbone, recipe)
    seen = backbone.model.peft_config["default"]
    assert (seen.r, seen.lora_alpha, seen.lora_dropout, seen.task_type) == (4, 8, 0.1, "CAUSAL_LM")
    linear = {n.rsplit(".", 1)[-1] for n, m in tiny.model.named_modules()
              if isinstance(m, torch.nn.Linear) and m is not tiny.model.get_output_embeddings()}
    expected = {"attention": {"q_proj", "v_proj"}, "all-linear": linear,
                "all-linear+embeddings": linear | {"embed_tokens"}}[targets]
    assert lora_leaves(backbone.model) == expected
    layers = [m for m in backbone.model.modules() if isinstance(m, LoraLayer)]
    assert all(m.r["default"] == 4 and m.scaling["default"] == 2 for m in layers)
    assert recipe == lora_config(4, 8, 0.1, targets), "the method's config is copied, never completed in place"


@pytest.mark.parametrize("targets", LORA_TARGETS)
def test_a_lora_config_round_trips_through_meta(tmp_path: Path, targets: str) -> None:
    written = write_meta(tmp_path, {"backbone": "tiny", "lora": lora_config(4, 8, 0.1, targets)}, kind="causal")
    record = {"r": 4, "alpha": 8, "dropout": 0.1, "targets": targets}
    assert written["lora"] == read_meta(tmp_path)["lora"] == json.loads((tmp_path / "meta.json").read_text())["lora"]
    assert written["lora"] == record
    assert ModelMeta.from_dict(written).lora == lora_from_meta(record) == lora_config(4, 8, 0.1, targets)


def test_a_lora_config_meta_cannot_record_is_refused(tmp_path: Path) -> None:
    with pytest.raises(E2URecError, match="target_modules"):
        lora_to_meta(LoraConfig(r=4, target_modules=["q_proj"]))
    rslora = lora_config(4, 8, 0.0)
    rslora.use_rslora = True
    with pytest.raises(E2URecError, match="use_rslora"):
        write_meta(tmp_path / "out", {"backbone": "tiny", "lora": rslora})
    assert not (tmp_path / "out").exists()


def test_a_lora_model_with_an_old_lora_record_still_loads(tmp_path: Path) -> None:
    backbone = load_backbone("tiny", seed=0)
    make_trainable(backbone, lora_config(4, 8, 0.0))
    with torch.no_grad():
        for name, value in backbone.model.named_parameters():
            if "lora_B" in name:
                value.normal_()  # B starts at zero; make the adapter change the model
    save_model(backbone, tmp_path / "m", {"backbone": "tiny", "base": {"backbone": "tiny", "seed": 0},
                                          "lora": lora_config(4, 8, 0.0)})
    old = json.loads((tmp_path / "m" / "meta.json").read_text())
    del old["format"]
    old["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}  # before `targets` was recorded
    (tmp_path / "m" / "meta.json").write_text(json.dumps(old))
    loaded, meta = load_model(tmp_path / "m")
    assert meta["lora"] == {"r": 4, "alpha": 8, "dropout": 0.0, "targets": "attention"}
    assert ModelMeta.from_dict(old).lora == lora_config(4, 8, 0.0)
    saved = dict(backbone.model.named_parameters())
    adapters = {n: v for n, v in loaded.model.named_parameters() if "lora_" in n}
    assert adapters and all(torch.equal(v, saved[n]) for n, v in adapters.items())


@pytest.mark.parametrize("targets", ["attention", "all-linear+embeddings"])
def test_a_merged_version_serves_what_was_audited(tmp_path: Path, targets: str) -> None:
    """The tiny backbone ties its head to the input embedding. An embedding adapter acts on the input side only;
    merged into the shared matrix it would move the head too. full_weights unties first, so the merged (and saved,
    and reloaded) version gives the student's own answers."""
    from e2urec.model.scoring import score

    backbone = load_backbone("tiny", seed=0)
    add_lora(backbone, lora_config(8, 16, 0.0, targets))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in backbone.model.named_parameters():
            if "lora_" in name:  # a trained-looking adapter: both factors non-zero
                param.normal_(0, 0.05)
    prompts = ["User likes Yes. Answer Yes or No:", "Item No. 5 — Yes? No?", "a rating of 4 stars. Yes or No"]
    student = score(backbone, prompts)
    merged = full_weights(backbone)
    assert abs(score(merged, prompts) - student).max() < 1e-4
    save_model(merged, tmp_path / "version", {"role": "version"})
    assert abs(score(load_model(tmp_path / "version")[0], prompts) - student).max() < 1e-4
