"""Tokenizer files for the twins, written locally (no hub).

CLIP: the real vocabulary. open_clip ships OpenAI's BPE merges (`bpe_simple_vocab_16e6.txt.gz`); the Hugging Face
`vocab.json` / `merges.txt` of openai/clip-vit-large-patch14 (SD 1.5's `tokenizer/`) are the same table written the
way OpenAI's `SimpleTokenizer.__init__` builds it (copied in open_clip/tokenizer.py):

    merges = lines[1 : 49152 - 256 - 2 + 1]                       # 48,894 merges after the version line
    vocab  = bytes_to_unicode().values()                          # 256 byte symbols
           + [v + "</w>" for v in those]                          # 256 end-of-word symbols
           + ["".join(m) for m in merges]                         # one token per merge, in merge order
           + ["<|startoftext|>", "<|endoftext|>"]                 # 49406, 49407

merges.txt is "#version: 0.2" and the merges, one "a b" pair per line. The byte table is CLIP's reversible one
(`core/clip_bpe.py`, shared with the toy world's tokenizer).

BERT (the Q-Former's tokenizer, `bert-base-uncased`, which the Salesforce/blipdiffusion folder does not contain and
this environment does not have): a synthetic WordPiece vocabulary of the real size (30,522) with the real special-token
ids ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, [unused*] where bert-base-uncased has them), then every
printable ASCII character and its "##" continuation, so any text tokenizes; word ids are not bert-base-uncased's.
"""

from __future__ import annotations

import gzip
import json
import string
from pathlib import Path

from ..core.clip_bpe import bytes_to_unicode
from .configs import BERT_VOCAB_SIZE, SD15_SPECIAL_TOKENS_MAP, SD15_TOKENIZER_CONFIG

CLIP_NUM_MERGES = 49152 - 256 - 2  # OpenAI's SimpleTokenizer reads lines[1 : 49152 - 256 - 2 + 1]


def open_clip_bpe_path() -> Path:
    """open_clip's copy of OpenAI's BPE merges (found without importing open_clip, which pulls in torch and timm)."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open_clip is not installed; its bpe_simple_vocab_16e6.txt.gz is the CLIP vocabulary source")
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the open_clip install")
    return path


def clip_vocab_and_merges(bpe_path: Path | None = None) -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(bpe_path or open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = lines[1 : CLIP_NUM_MERGES + 1]
    if len(merges) != CLIP_NUM_MERGES or any(len(m.split()) != 2 for m in merges):
        raise ValueError("the BPE file does not hold CLIP's 48,894 merges after its version line")
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens) or len(vocab) != 49408:
        raise ValueError(f"the CLIP vocabulary has {len(vocab)} distinct tokens, expected 49408")
    return vocab, merges


def write_clip_tokenizer(out: Path, bpe_path: Path | None = None) -> Path:
    """SD 1.5's `tokenizer/` folder: vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json."""
    vocab, merges = clip_vocab_and_merges(bpe_path)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(SD15_TOKENIZER_CONFIG, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(SD15_SPECIAL_TOKENS_MAP, indent=2))
    return out


def bert_vocabulary() -> list[str]:
    """The synthetic bert-base-uncased-shaped vocabulary (see the module docstring)."""
    words = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += [f"[unused{i}]" for i in range(99, 994)]  # bert-base-uncased: [unused99] .. [unused993] at 104 .. 998
    chars = [c for c in string.printable if not c.isspace() and not c.isupper()]
    words += chars + ["##" + c for c in chars]
    words += [f"[twin{i}]" for i in range(BERT_VOCAB_SIZE - len(words))]
    assert len(words) == BERT_VOCAB_SIZE and words[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return words


def write_bert_tokenizer(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(bert_vocabulary()) + "\n")
    config = {"do_lower_case": True, "model_max_length": 512, "tokenizer_class": "BertTokenizer"}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out
