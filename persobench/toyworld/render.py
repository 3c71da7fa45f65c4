"""A deterministic numpy renderer for toy-world scenes.

Each image is drawn at 2x and box-downsampled (cheap anti-aliasing), so a 64 px image costs a few
milliseconds on one core. The same `Scene` (including its seed) always gives the same pixels.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from .world import COLOURS, Identity, Pose, Scene

SUPERSAMPLE = 2


@dataclasses.dataclass
class Rendered:
    image: np.ndarray  # uint8 HxWx3
    mask: np.ndarray  # bool HxW, the subject (accessories included)
    scene: Scene
    secondary_pixels: int = 0  # pixels showing the secondary colour (0 where it equals the shown primary)


def _rgb(name: str) -> np.ndarray:
    return np.asarray(COLOURS[name], dtype=np.float32) / 255.0


def _vertical(h: int, w: int, top: tuple, bottom: tuple) -> np.ndarray:
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    img = (1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32)
    return np.broadcast_to(img, (h, w, 3)).copy()


def _background(context: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """An n x n float RGB background for a context id."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    noise = rng.normal(0.0, 1.0, (n, n, 1)).astype(np.float32)
    horizon = 0.38 + rng.uniform(-0.04, 0.04)
    sky = _vertical(n, n, (0.45, 0.68, 0.95), (0.75, 0.87, 1.0))
    if context == "studio":
        tint = rng.uniform(0.75, 0.92, 3).astype(np.float32)
        img = _vertical(n, n, tint, tint * 0.85)
    elif context == "snow":
        img = _vertical(n, n, (0.78, 0.84, 0.92), (0.9, 0.93, 0.97))
        ground = (yy > horizon)[..., None]
        img = np.where(ground, 0.95 + 0.03 * noise, img)
        flakes = rng.random((n, n, 1)) < 0.02
        img = np.where(flakes, 1.0, img)
    elif context == "beach":
        img = sky.copy()
        sea = ((yy > horizon - 0.1) & (yy <= horizon))[..., None]
        sand = (yy > horizon)[..., None]
        img = np.where(sea, np.array([0.1, 0.35, 0.7], np.float32) + 0.03 * noise, img)
        img = np.where(sand, np.array([0.88, 0.78, 0.55], np.float32) + 0.05 * noise, img)
    elif context == "jungle":
        img = np.full((n, n, 3), (0.05, 0.25, 0.08), np.float32)
        for _ in range(40):
            cx, cy, r = rng.random(), rng.random(), rng.uniform(0.04, 0.12)
            leaf = ((xx - cx) ** 2 / (r * 1.8) ** 2 + (yy - cy) ** 2 / r**2) < 1
            colour = np.array([0.1, rng.uniform(0.35, 0.65), 0.1], np.float32)
            img[leaf] = colour
        img += 0.03 * noise
    elif context == "fabric":
        folds = np.sin((xx + yy) * 25 + rng.uniform(0, 6)) * 0.08
        img = np.array([0.93, 0.55, 0.72], np.float32) + folds[..., None] + 0.02 * noise
    elif context == "wood":
        plank = np.floor(yy * 8 + 0.5 * rng.random())
        grain = 0.05 * np.sin(xx * 60 + plank * 3.1) + 0.05 * (plank % 2)
        img = np.array([0.62, 0.4, 0.22], np.float32) + grain[..., None] + 0.02 * noise
    elif context == "city":
        img = _vertical(n, n, (0.6, 0.65, 0.72), (0.75, 0.78, 0.82))
        x = 0.0
        while x < 1.0:
            width, height = rng.uniform(0.1, 0.2), rng.uniform(0.25, 0.6)
            grey = rng.uniform(0.3, 0.55)
            building = (xx >= x) & (xx < x + width) & (yy > 0.75 - height)
            windows = building & ((xx * n) % 6 < 2) & ((yy * n) % 7 < 3)
            img[building] = (grey, grey, grey + 0.03)
            img[windows] = (0.95, 0.9, 0.6)
            x += width + 0.01
        img[yy > 0.75] = (0.35, 0.35, 0.37)
    elif context == "night":
        img = _vertical(n, n, (0.02, 0.02, 0.12), (0.06, 0.06, 0.2))
        stars = rng.random((n, n)) < 0.01
        img[stars] = 0.95
        mx, my = rng.uniform(0.7, 0.9), rng.uniform(0.08, 0.2)
        img[((xx - mx) ** 2 + (yy - my) ** 2) < 0.004] = (0.97, 0.95, 0.8)
    elif context == "grass":
        img = sky.copy()
        ground = (yy > horizon)[..., None]
        blades = 0.06 * np.sin(xx * 200 + rng.uniform(0, 6))[..., None]
        img = np.where(ground, np.array([0.2, 0.6, 0.15], np.float32) + blades + 0.04 * noise, img)
    else:
        raise ValueError(f"unknown toy-world context {context!r}")
    return img


def _pattern(pattern: str, scale: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """1 where the secondary colour shows, in the subject's own frame (so it moves with the pose)."""
    f = 2.2 if scale == "coarse" else 4.0
    if pattern == "plain":
        return np.zeros_like(u, dtype=bool)
    if pattern == "striped":
        return (np.floor(v * f) % 2) == 1
    if pattern == "dotted":
        fu, fv = (u * f) % 1.0 - 0.5, (v * f) % 1.0 - 0.5
        return (fu**2 + fv**2) < 0.28**2
    if pattern == "checkered":
        return ((np.floor(u * f) + np.floor(v * f)) % 2) == 1
    raise ValueError(f"unknown pattern {pattern!r}")


def _shape(cls: str, s: float, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(body mask, trim mask): trim is a part always drawn in the secondary colour."""
    if cls == "ball":
        r = 0.85 * (1 + 0.08 * s)
        return u**2 + v**2 < r**2, np.zeros_like(u, dtype=bool)
    if cls == "box":
        w = 0.72 * (1 + 0.12 * s)
        front = (np.abs(u) < w) & (v > -0.4) & (v < 0.85)
        t = np.clip((-0.4 - v) / 0.42, 0, 1)
        top = (v <= -0.4) & (v > -0.82) & (u > -w + 0.35 * t) & (u < w + 0.35 * t)
        return front | top, top
    if cls == "vase":
        rx = 0.62 * (1 + 0.12 * s)
        body = (u / rx) ** 2 + ((v - 0.38) / 0.52) ** 2 < 1
        neck = (np.abs(u) < 0.2) & (v > -0.8) & (v < 0.0)
        lip = (np.abs(u) < 0.34) & (v > -0.95) & (v <= -0.8)
        return body | neck | lip, lip
    if cls == "cup":
        half = 0.48 + 0.1 * (0.8 - v) / 1.6 + 0.06 * s
        body = (np.abs(u + 0.12) < half) & (v > -0.65) & (v < 0.8)
        d = (u - 0.5) ** 2 + (v - 0.05) ** 2
        handle = (d < 0.42**2) & (d > 0.24**2) & (u > 0.45)
        rim = body & (v < -0.5)
        return body | handle, handle | rim
    if cls == "cat":
        r = 0.68 * (1 + 0.06 * s)
        head = u**2 + (v - 0.15) ** 2 < r**2
        ears = np.zeros_like(head)
        for side in (-1, 1):
            eu = (u - side * 0.42) * side
            ears |= (v < -0.2) & (v > -0.95) & (np.abs(eu) < (v + 0.95) * 0.45)
        inner = np.zeros_like(head)
        for side in (-1, 1):
            eu = (u - side * 0.42) * side
            inner |= (v < -0.3) & (v > -0.8) & (np.abs(eu) < (v + 0.8) * 0.25)
        return head | ears, inner
    raise ValueError(f"unknown toy-world class {cls!r}")


def render(scene: Scene, size: int = 64) -> Rendered:
    """Render a scene; deterministic in the scene (its seed included)."""
    rng = np.random.default_rng(scene.seed)
    n = size * SUPERSAMPLE
    img = _background(scene.context, n, rng)
    ident, pose = scene.identity, scene.pose
    yy, xx = (np.mgrid[0:n, 0:n].astype(np.float32) + 0.5) / n
    dx, dy = (xx - pose.x) / pose.size, (yy - pose.y) / pose.size
    a = np.deg2rad(pose.angle)
    u = np.cos(a) * dx + np.sin(a) * dy
    v = -np.sin(a) * dx + np.cos(a) * dy
    if pose.flip:
        u = -u

    # shadow on the ground, then the subject
    shadow = ((xx - pose.x) / (pose.size * 0.9)) ** 2 + ((yy - pose.y - 0.85 * pose.size) / (0.18 * pose.size)) ** 2 < 1
    img[shadow] *= 0.6

    body, trim = _shape(ident.cls, ident.shape, u, v)
    secondary = _pattern(ident.pattern, ident.scale, u, v) | trim
    primary_rgb, secondary_rgb = _rgb(scene.shown_primary), _rgb(ident.secondary)
    colour = np.where(secondary[..., None], secondary_rgb, primary_rgb)
    shade = np.clip(1.08 - 0.14 * (0.5 * u + 0.8 * v), 0.7, 1.15)[..., None]
    if scene.context == "night":
        shade = shade * 0.75
    obj = np.clip(colour * shade, 0, 1)
    if scene.prop == "shiny":
        spec = np.exp(-(((u + 0.3) ** 2 + (v + 0.3) ** 2) / 0.03))[..., None]
        obj = obj + (1 - obj) * 0.9 * spec
    mask = body.copy()
    img = np.where(body[..., None], obj, img)
    shown = body & secondary  # where the secondary colour shows, until something is drawn over it

    if ident.cls == "cat":  # eyes and nose: what makes it a creature
        for side in (-1, 1):
            eye = (u - side * 0.27) ** 2 + (v - 0.05) ** 2 < 0.14**2
            glint = (u - side * 0.27 + 0.04) ** 2 + (v - 0.01) ** 2 < 0.045**2
            img[eye] = (0.05, 0.05, 0.05)
            img[glint] = (1.0, 1.0, 1.0)
            shown &= ~eye
        nose = (u**2 / 0.1**2 + (v - 0.35) ** 2 / 0.07**2) < 1
        img[nose] = (0.9, 0.45, 0.55)
        shown &= ~nose
        if scene.accessory == "hat":
            hat = (v < -0.55) & (v > -1.35) & (np.abs(u) < 0.25 + (v + 1.35) * 0.35)
            brim = (np.abs(u) < 0.75) & (v > -0.62) & (v < -0.48)
            img[hat | brim] = (0.85, 0.1, 0.1)
            mask |= hat | brim
            shown &= ~(hat | brim)
        elif scene.accessory == "glasses":
            lens = np.zeros_like(mask)
            for side in (-1, 1):
                d = (u - side * 0.27) ** 2 + (v - 0.05) ** 2
                lens |= (d < 0.24**2) & (d > 0.17**2)
            bridge = (np.abs(u) < 0.1) & (np.abs(v - 0.0) < 0.03)
            img[lens | bridge] = (1.0, 0.4, 0.75)
            shown &= ~(lens | bridge)

    img = img.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    mask = mask.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3)) > 0.5
    shown = shown.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3)) > 0.5
    distinct = ident.secondary != scene.shown_primary
    return Rendered(image=(np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), mask=mask, scene=scene,
                    secondary_pixels=int(shown.sum()) if distinct else 0)


@functools.lru_cache(maxsize=1024)  # the oracle metric asks once per image row; rows repeat (subject, prompt)
def secondary_drawn(identity: Identity, prop: str = "none", accessory: str = "none") -> bool:
    """Whether an image of this subject (with this property / accessory) can show its secondary colour at
    all, judged on a centred, upright render: a plain ball has none, "a purple ..." repaints a purple trim."""
    pose = Pose(x=0.5, y=0.55, size=0.3, angle=0.0, flip=False)
    return render(Scene(identity, pose, prop=prop, accessory=accessory)).secondary_pixels > 0
