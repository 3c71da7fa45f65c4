"""The toy world's vocabulary: classes, identity attributes, contexts, properties, accessories.

An instance's identity is (class, primary colour, secondary colour, pattern, pattern scale, shape
variation); two instances of one class differ only there, as DreamBench subjects do. Everything is
data so the renderer, the captioner, the tokenizer and the oracle read one definition.
"""

from __future__ import annotations

import dataclasses
import random

CLASSES: dict[str, str] = {  # class noun -> DreamBench kind ("object" or "live")
    "ball": "object",
    "box": "object",
    "vase": "object",
    "cup": "object",
    "cat": "live",
}

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 38, 40),
    "orange": (245, 135, 20),
    "yellow": (245, 215, 35),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 190),
    "pink": (245, 140, 190),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
    "brown": (125, 75, 35),
}

PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
PATTERN_SCALES: tuple[str, ...] = ("coarse", "fine")

# context id -> phrase used in captions and prompts; "studio" is the plain backdrop with no phrase.
CONTEXTS: dict[str, str] = {
    "studio": "",
    "snow": "in the snow",
    "beach": "on the beach",
    "jungle": "in the jungle",
    "fabric": "on top of pink fabric",
    "wood": "on top of a wooden floor",
    "city": "with a city in the background",
    "night": "at night",
    "grass": "on top of green grass",
}

# property prompts (DreamBench's "a red {0} {1}" family) -> how they change the rendering
PROPERTIES: dict[str, str] = {"none": "", "red": "red", "purple": "purple", "shiny": "shiny"}

ACCESSORIES: dict[str, str] = {  # live subjects only
    "none": "",
    "hat": "wearing a red hat",
    "glasses": "wearing pink glasses",
}

IDENTIFIERS: tuple[str, ...] = ("sks", "zwx", "olis", "phol", "vrek", "tuvo", "qelm", "brix")

PROMPT_CONTEXTS = [c for c in CONTEXTS if c != "studio"]


@dataclasses.dataclass(frozen=True)
class Identity:
    """What makes one subject this subject and not another of its class."""

    cls: str
    primary: str
    secondary: str
    pattern: str
    scale: str
    shape: float  # in [-1, 1]: aspect / proportion variation within the class

    @staticmethod
    def sample(rng: random.Random, cls: str | None = None) -> Identity:
        cls = cls or rng.choice(list(CLASSES))
        primary, secondary = rng.sample(list(COLOURS), 2)
        return Identity(
            cls=cls,
            primary=primary,
            secondary=secondary,
            pattern=rng.choice(PATTERNS),
            scale=rng.choice(PATTERN_SCALES),
            shape=round(rng.uniform(-1.0, 1.0), 3),
        )


@dataclasses.dataclass(frozen=True)
class Pose:
    """Where and how the subject sits in the frame."""

    x: float  # centre, fraction of the width
    y: float
    size: float  # half-extent, fraction of the width
    angle: float  # degrees
    flip: bool

    @staticmethod
    def sample(rng: random.Random) -> Pose:
        return Pose(
            x=rng.uniform(0.4, 0.6),
            y=rng.uniform(0.5, 0.62),
            size=rng.uniform(0.26, 0.34),
            angle=rng.uniform(-12.0, 12.0),
            flip=rng.random() < 0.5,
        )


@dataclasses.dataclass(frozen=True)
class Scene:
    """Everything the renderer needs; also the ground truth of the image it renders."""

    identity: Identity
    pose: Pose
    context: str = "studio"
    prop: str = "none"
    accessory: str = "none"
    seed: int = 0

    @property
    def kind(self) -> str:
        return CLASSES[self.identity.cls]

    @property
    def shown_primary(self) -> str:
        """The colour the subject is drawn in: a colour property repaints it."""
        return self.prop if self.prop in COLOURS else self.identity.primary


def sample_scene(rng: random.Random, identity: Identity | None = None, seed: int | None = None) -> Scene:
    """A random training scene: random instance (unless given), pose, context, property, accessory."""
    identity = identity or Identity.sample(rng)
    live = CLASSES[identity.cls] == "live"
    return Scene(
        identity=identity,
        pose=Pose.sample(rng),
        context=rng.choice(list(CONTEXTS)),
        prop="shiny" if rng.random() < 0.1 else "none",
        accessory=rng.choice(["hat", "glasses"]) if live and rng.random() < 0.3 else "none",
        seed=rng.randrange(2**31) if seed is None else seed,
    )


def vocabulary_words() -> list[str]:
    """Every word a toy caption or prompt can contain (the tokenizer's whole-word entries)."""
    words: set[str] = {"a", "an", "the", "photo", "of", "picture", "{}"}
    words.update(CLASSES)
    words.update(COLOURS)
    words.update(PATTERNS)
    for phrase in [*CONTEXTS.values(), *ACCESSORIES.values(), *PROPERTIES.values()]:
        words.update(phrase.split())
    words.update(IDENTIFIERS)
    words.discard("{}")
    return sorted(words)
