"""Training captions for toy-world scenes.

Captions sometimes omit identity attributes, so the class word alone carries a prior over many
instances (what personalization then narrows), and are sometimes empty (caption dropout, so
classifier-free guidance works).
"""

from __future__ import annotations

import random

from .world import ACCESSORIES, CONTEXTS, Scene


def caption(scene: Scene, rng: random.Random, dropout: float = 0.1) -> str:
    if rng.random() < dropout:
        return ""
    ident = scene.identity
    words: list[str] = []
    if scene.prop == "shiny":
        words.append("shiny")
    if scene.prop in ("red", "purple") or rng.random() < 0.7:
        words.append(scene.shown_primary)
    if ident.pattern != "plain" and rng.random() < 0.5:
        words.append(ident.pattern)
    words.append(ident.cls)
    prefix = "a photo of a" if rng.random() < 0.3 else "a"
    text = " ".join([prefix, *words])
    if CONTEXTS[scene.context] and rng.random() < 0.9:
        text += " " + CONTEXTS[scene.context]
    if scene.accessory != "none":
        text += " " + ACCESSORIES[scene.accessory]
    return text
