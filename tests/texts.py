"""Small real text fixtures: a tiny BERT (random init, 2 layers, 32-d) with its own WordPiece
tokenizer.json, and a labelled intents CSV whose classes differ by their words, so that a run
learns them in seconds. Tests never read ../shared."""

from __future__ import annotations

import csv
import random
from pathlib import Path

INTENTS = {
    "lights_on": ["turn on the lights", "switch the lamp on", "lights on please", "make it bright in here",
                  "can you put the lights on", "i need light in the kitchen"],
    "lights_off": ["turn off the lights", "switch the lamp off", "lights off please", "make it dark in here",
                   "kill the lights", "no more light in the bedroom"],
    "play_music": ["play some music", "put on a song", "start my playlist", "i want to hear jazz",
                   "play the radio", "music please"],
    "weather": ["what is the weather", "will it rain today", "how cold is it outside", "is it sunny tomorrow",
                "weather forecast please", "do i need an umbrella"],
}
FILLERS = ["", "hey", "please", "now", "quickly", "for me", "right away", "thanks"]


def sentences(per_class: int, seed: int) -> list[tuple[str, str]]:
    """`per_class` labelled sentences per intent: a phrasing plus filler words, seeded."""
    rng = random.Random(seed)
    rows = []
    for label, phrasings in INTENTS.items():
        for i in range(per_class):
            words = [rng.choice(FILLERS), phrasings[i % len(phrasings)], rng.choice(FILLERS)]
            rows.append((" ".join(w for w in words if w), label))
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, rows, header=("text", "label")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def tiny_encoder(path: Path) -> Path:
    """A 2-layer, 32-d BERT with random weights and a WordPiece tokenizer over the fixtures' words."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel

    words = sorted({w for phr in INTENTS.values() for p in phr for w in p.split()} |
                   {w for f in FILLERS for w in f.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] \
        + list("abcdefghijklmnopqrstuvwxyz")
    ids = {t: i for i, t in enumerate(dict.fromkeys(vocab))}
    tok = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", ids["[CLS]"]),
                                                                       ("[SEP]", ids["[SEP]"])])
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    import torch

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(ids), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(str(path))
    return path
