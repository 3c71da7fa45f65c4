"""A small CLIP BPE tokenizer written locally (no hub), loadable with `CLIPTokenizer`.

The vocabulary holds every byte-level symbol (so any text tokenizes, as in CLIP) plus merges that
assemble each toy-world word into one whole-word token, the rare identifier tokens included.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.clip_bpe import bytes_to_unicode
from .world import vocabulary_words

MODEL_MAX_LENGTH = 24


def build_tokenizer_files(out: Path, words: list[str] | None = None) -> Path:
    """Write vocab.json, merges.txt, special_tokens_map.json and tokenizer_config.json to `out`.

    BPE merges of different words can clash (a short word's merge pre-empting a long one's), so the
    merge order is repaired until every word is one token, checked with `CLIPTokenizer` itself.
    """
    from transformers import CLIPTokenizer

    words = sorted(words or vocabulary_words(), key=lambda w: (-len(w), w))  # long words first
    for _ in range(len(words)):
        _write_files(out, words)
        tokenizer = CLIPTokenizer.from_pretrained(out)
        split = [w for w in words if len(tokenizer(w).input_ids) != 3]
        if not split:
            return out
        words = split + [w for w in words if w not in split]
    raise RuntimeError(f"could not build whole-word BPE merges for {split}")


def _write_files(out: Path, words: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab.setdefault(s, len(vocab))
    for s in symbols:
        vocab.setdefault(s + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for word in words:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:  # merge left to right: every intermediate piece is in the vocabulary
            pair = (parts[0], parts[1])
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.setdefault(parts[0], len(vocab))
    vocab.setdefault("<|startoftext|>", len(vocab))
    vocab.setdefault("<|endoftext|>", len(vocab))
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    specials = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MODEL_MAX_LENGTH, "do_lower_case": True, **specials}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
