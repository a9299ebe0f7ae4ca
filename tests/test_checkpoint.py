"""meta.json's one typed record: written and read through ModelMeta, old files still read, bad ones refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2urec.checkpoint import META_FORMAT, ModelMeta, load_model, read_meta, save_model, write_meta
from e2urec.errors import E2URecError
from e2urec.model.backbone import Backbone


def test_meta_round_trip_keeps_every_fact_and_adds_the_format(tmp_path: Path) -> None:
    meta = {"backbone": "tiny", "role": "original", "base": {"backbone": "tiny", "seed": 3},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "config": {"lr": 1e-3}, "train_seconds": 1.5}
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
                                          ({"lora": {"r": 4}}, "lora")])
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
