"""The "tiny" and "tiny-t5" built-ins: small random models (seeded, bit-identical per seed) for fast CPU runs.

"tiny" is a 2-layer LLaMA on SmolLM2's real tokenizer, so prompts split as they would for the real model;
"tiny-t5" is a 2-layer T5 on a small byte-level BPE tokenizer trained here, so it needs no download at all.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from transformers import (
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
from e2urec.io import atomic_dir, cache_dir, read_json, write_json_atomic
from e2urec.model.backbone import RECORD, Kind, seeded
from e2urec.model.builtins.smollm2 import _smollm2_tokenizer


def load_tiny(seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Kind]:
    tokenizer = _smollm2_tokenizer()
    return seeded(seed, lambda: AutoModelForCausalLM.from_config(_tiny_llama_config(tokenizer))), tokenizer, "causal"


def load_tiny_t5(seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Kind]:
    tokenizer = _tiny_t5_tokenizer()
    return seeded(seed, lambda: AutoModelForSeq2SeqLM.from_config(_tiny_t5_config(tokenizer))), tokenizer, "seq2seq"


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
