"""CLIP's byte-level BPE alphabet, shared by the tokenizers persobench writes (the toy world's small vocabulary,
the SD 1.5 twin's real one converted from open_clip's merges file)."""

from __future__ import annotations


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable unicode table (OpenAI CLIP simple_tokenizer.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))
