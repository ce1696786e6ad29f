"""Procedural faces with and without safety glasses: the project's own demo data (no download needed).

Every image is drawn from a small parameter set (:class:`FaceParams`) with PIL, so a seed fully determines the
dataset (same seed -> the same bytes). People (``group``) appear in a few images each, with and without
eyewear, so that group-aware splitting matters. Optional *shifts* change the look of a whole dataset (for drift
demos) and ``spurious="red_hair"`` plants the "all red-haired workers wear glasses" trap that validation must
flag.

The layout written is an ImageFolder plus a labels CSV::

    OUTPUT/glasses/img_00000.png
    OUTPUT/no_glasses/img_00001.png
    OUTPUT/labels.csv    path,label,group,skin_tone,hair_colour,headwear,background,lighting,eyewear
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from visionops import storage
from visionops.errors import ConfigError
from visionops.policy import NEGATIVE_CLASS, POSITIVE_CLASS

log = logging.getLogger(__name__)

CLASSES = (POSITIVE_CLASS, NEGATIVE_CLASS)
SHIFTS = ("dark", "blur", "greyscale", "new_hair", "new_background")
SPURIOUS = ("red_hair",)
IMAGES_PER_PERSON = 4
LABELS_CSV = "labels.csv"
METADATA_COLUMNS = ("skin_tone", "hair_colour", "headwear", "background", "lighting", "eyewear")

SKIN_TONES = {
    "I": (246, 221, 200),
    "II": (236, 196, 164),
    "III": (214, 168, 128),
    "IV": (184, 132, 94),
    "V": (140, 92, 62),
    "VI": (92, 60, 42),
}
HAIR_COLOURS = {
    "black": (28, 24, 22),
    "dark_brown": (66, 44, 30),
    "brown": (112, 78, 50),
    "blonde": (214, 184, 120),
    "grey": (168, 166, 162),
}
#: Only planted by ``spurious="red_hair"``: absent from normal data, so the few red-haired people stand out.
RED_HAIR = {"red": (170, 58, 28)}
#: Only used by the ``new_hair`` shift: colours the training data never showed.
NEW_HAIR_COLOURS = {"blue": (40, 80, 200), "green": (40, 160, 70), "pink": (236, 90, 170)}
HAIR_STYLES = ("short", "long", "bald", "curly")
EYE_COLOURS = ((70, 45, 25), (40, 90, 150), (60, 110, 60), (30, 25, 20))
SHIRT_COLOURS = ((255, 140, 0), (230, 230, 40), (40, 70, 140), (90, 90, 95), (200, 60, 50), (240, 240, 240))
HARD_HAT_COLOURS = ((250, 210, 20), (245, 245, 240), (250, 120, 20), (30, 90, 200))
BACKGROUNDS = ("plain", "gradient", "tiles", "workshop", "outdoor")
NEW_BACKGROUNDS = ("neon",)
LIGHTING = {"normal": 1.0, "bright": 1.18, "dim": 0.72, "side": 1.0}
EYEWEAR = ("round", "rectangular", "browline", "goggles", "wraparound")
FRAME_COLOURS = ((20, 20, 22), (70, 45, 30), (120, 120, 128), (190, 160, 70), (170, 30, 30), (30, 60, 160))
LENS_TINTS = {
    "clear": ((225, 235, 245), 0.22),
    "grey": ((60, 60, 66), 0.5),
    "amber": ((230, 160, 30), 0.42),
    "blue": ((60, 120, 220), 0.38),
    "yellow": ((245, 225, 60), 0.38),
}
_PALETTE_BG = (
    (200, 205, 210),
    (180, 190, 170),
    (210, 190, 170),
    (150, 170, 190),
    (120, 125, 130),
    (225, 225, 215),
)


@dataclass(frozen=True)
class FaceParams:
    """Everything that decides how one face image looks (``eyewear="none"`` = no glasses)."""

    skin_tone: str = "III"
    hair_colour: str = "brown"
    hair_style: str = "short"
    eye_colour: int = 0
    face_width: float = 1.0
    face_height: float = 1.0
    beard: bool = False
    brow_weight: float = 1.0
    shirt: int = 0
    headwear: str = "none"  # none | hard_hat
    hat_colour: int = 0
    background: str = "plain"
    bg_colour: int = 0
    lighting: str = "normal"
    light_side: float = 1.0  # +1 light from the left, -1 from the right ("side" lighting only)
    warmth: float = 0.0
    smile: float = 0.0
    angle: float = 0.0  # degrees
    dx: float = 0.0  # fraction of the image
    dy: float = 0.0
    scale: float = 1.0
    eyewear: str = "none"
    frame_colour: int = 0
    frame_width: float = 0.016
    lens_tint: str = "clear"
    noise_seed: int = 0
    noise_sigma: float = 4.0
    shift: str | None = None


def _rng(*key: int):
    import numpy as np

    return np.random.default_rng([abs(int(k)) for k in key])


def sample_person(rng, *, spurious_red: bool = False) -> dict[str, Any]:
    """The identity of one person: what stays the same across their images."""
    hair = "red" if spurious_red else str(rng.choice(list(HAIR_COLOURS)))
    return {
        "skin_tone": str(rng.choice(list(SKIN_TONES))),
        "hair_colour": hair,
        "hair_style": str(rng.choice(HAIR_STYLES, p=[0.4, 0.25, 0.15, 0.2])),
        "eye_colour": int(rng.integers(len(EYE_COLOURS))),
        "face_width": float(rng.uniform(0.9, 1.1)),
        "face_height": float(rng.uniform(0.92, 1.08)),
        "beard": bool(rng.random() < 0.2),
        "brow_weight": float(rng.uniform(0.7, 1.5)),
        "shirt": int(rng.integers(len(SHIRT_COLOURS))),
    }


def sample_shot(rng, *, glasses: bool) -> dict[str, Any]:
    """What changes from one image of a person to the next: scene, pose and (when worn) the eyewear."""
    shot: dict[str, Any] = {
        "headwear": "hard_hat" if rng.random() < 0.25 else "none",
        "hat_colour": int(rng.integers(len(HARD_HAT_COLOURS))),
        "background": str(rng.choice(BACKGROUNDS)),
        "bg_colour": int(rng.integers(len(_PALETTE_BG))),
        "lighting": str(rng.choice(list(LIGHTING), p=[0.4, 0.2, 0.2, 0.2])),
        "light_side": float(rng.choice([-1.0, 1.0])),
        "warmth": float(rng.uniform(-0.06, 0.06)),
        "smile": float(rng.uniform(-0.3, 1.0)),
        "angle": float(rng.uniform(-7, 7)),
        "dx": float(rng.uniform(-0.04, 0.04)),
        "dy": float(rng.uniform(-0.03, 0.03)),
        "scale": float(rng.uniform(0.92, 1.08)),
        "noise_seed": int(rng.integers(2**31)),
        "noise_sigma": float(rng.uniform(2.0, 7.0)),
        "eyewear": "none",
    }
    # The eyewear fields are drawn for everybody so that the scene above does not depend on the label.
    eyewear = {
        "eyewear": str(rng.choice(EYEWEAR, p=[0.2, 0.25, 0.15, 0.2, 0.2])),
        "frame_colour": int(rng.integers(len(FRAME_COLOURS))),
        "frame_width": float(rng.uniform(0.02, 0.032)),
        "lens_tint": str(rng.choice(list(LENS_TINTS), p=[0.4, 0.15, 0.15, 0.15, 0.15])),
    }
    if glasses:
        shot.update(eyewear)
    if shot["eyewear"] in ("goggles", "wraparound") and shot["lens_tint"] == "clear" and rng.random() < 0.5:
        shot["lens_tint"] = "yellow"
    return shot


def random_params(seed: int, *, glasses: bool = True) -> FaceParams:
    """One random face (used by :func:`render_pair`)."""
    rng = _rng(seed, 7)
    person = sample_person(rng)
    shot = sample_shot(rng, glasses=True)
    params = FaceParams(**person, **shot)
    return params if glasses else replace(params, eyewear="none")


# -- drawing ------------------------------------------------------------------------------------------------
def _shade(colour: tuple[int, int, int], factor: float, alpha: int | None = None) -> tuple[int, ...]:
    rgb = tuple(max(0, min(255, int(c * factor))) for c in colour)
    return (*rgb, alpha) if alpha is not None else rgb


def _background(params: FaceParams, n: int):
    import numpy as np
    from PIL import Image, ImageDraw

    base = _PALETTE_BG[params.bg_colour % len(_PALETTE_BG)]
    img = Image.new("RGB", (n, n), base)
    draw = ImageDraw.Draw(img)
    rng = _rng(params.noise_seed, 11)
    if params.background == "gradient":
        top, bottom = np.array(base, float), np.array(_PALETTE_BG[(params.bg_colour + 3) % 6], float)
        t = np.linspace(0, 1, n)[:, None, None]
        arr = (top * (1 - t) + bottom * t) * np.ones((1, n, 1))
        img = Image.fromarray(arr.astype("uint8"))
    elif params.background == "tiles":
        step = n // int(rng.integers(4, 8))
        line = _shade(base, 0.75)
        for k in range(0, n, step):
            draw.line([(k, 0), (k, n)], fill=line, width=max(1, n // 150))
            draw.line([(0, k), (n, k)], fill=line, width=max(1, n // 150))
    elif params.background == "workshop":
        for _ in range(int(rng.integers(4, 9))):
            x0, y0 = rng.uniform(0, n, 2)
            w, h = rng.uniform(0.1 * n, 0.4 * n), rng.uniform(0.05 * n, 0.2 * n)
            colour = tuple(int(c) for c in rng.integers(60, 200, 3))
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
    elif params.background == "outdoor":
        draw.rectangle([0, 0, n, int(n * 0.55)], fill=(150, 190, 230))
        draw.rectangle([0, int(n * 0.55), n, n], fill=(110, 140, 90))
    elif params.background == "neon":
        colours = ((255, 0, 200), (0, 255, 120))
        step = max(2, n // 8)
        for i, k in enumerate(range(0, 2 * n, step)):
            draw.polygon([(k, 0), (k + step, 0), (k + step - n, n), (k - n, n)], fill=colours[i % 2])
    return img


def _hair_rgb(name: str) -> tuple[int, int, int]:
    return {**HAIR_COLOURS, **RED_HAIR, **NEW_HAIR_COLOURS}.get(name, HAIR_COLOURS["brown"])


def _draw_person(params: FaceParams, n: int, *, with_eyewear: bool = True):
    """The person on a transparent layer, in canonical pose (pose jitter is applied afterwards)."""
    from PIL import Image, ImageDraw

    layer = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer, "RGBA")
    s = n * params.scale * 1.15  # the head fills most of the frame

    def px(x: float, y: float) -> tuple[float, float]:
        return (n / 2 + (x - 0.5) * s, n / 2 + (y - 0.5) * s)

    def box(cx: float, cy: float, rx: float, ry: float) -> list[float]:
        (x0, y0), (x1, y1) = px(cx - rx, cy - ry), px(cx + rx, cy + ry)
        return [x0, y0, x1, y1]

    skin = SKIN_TONES.get(params.skin_tone, SKIN_TONES["III"])
    hair = _hair_rgb(params.hair_colour)
    fw, fh = 0.245 * params.face_width, 0.31 * params.face_height
    shirt = SHIRT_COLOURS[params.shirt % len(SHIRT_COLOURS)]
    # shoulders and neck
    d.ellipse(box(0.5, 1.08, 0.46, 0.24), fill=shirt)
    d.rectangle([*px(0.5 - 0.09, 0.7), *px(0.5 + 0.09, 0.9)], fill=_shade(skin, 0.88))
    # hair behind the head
    if params.hair_style == "long":
        d.rounded_rectangle(
            [*px(0.5 - fw - 0.04, 0.36), *px(0.5 + fw + 0.04, 0.86)], radius=s * 0.08, fill=hair
        )
    if params.hair_style != "bald":
        d.ellipse(box(0.5, 0.44, fw + 0.03, fh * 0.82), fill=hair)
    if params.hair_style == "curly":
        for k in range(9):
            ang = math.pi * (k / 8)
            d.ellipse(
                box(0.5 - math.cos(ang) * (fw + 0.01), 0.42 - math.sin(ang) * fh * 0.75, 0.05, 0.05),
                fill=hair,
            )
    # ears and face
    for side in (-1, 1):
        d.ellipse(box(0.5 + side * fw, 0.5, 0.03, 0.055), fill=_shade(skin, 0.93))
    d.ellipse(box(0.5, 0.52, fw, fh), fill=skin)
    if params.beard:
        d.chord(box(0.5, 0.56, fw * 0.98, fh * 0.9), 20, 160, fill=_shade(hair, 1.0, 235))
        d.ellipse(box(0.5, 0.655, 0.055, 0.03), fill=skin)
    # fringe
    if params.hair_style in ("short", "long", "curly"):
        d.chord(box(0.5, 0.45, fw * 1.02, fh * 0.7), 190, 350, fill=hair)
    # eyes, brows, nose, mouth
    eye_y = 0.475
    iris = EYE_COLOURS[params.eye_colour % len(EYE_COLOURS)]
    brow = _shade(hair, 0.7) if params.hair_colour not in ("grey", "blonde") else _shade(hair, 0.55)
    for side in (-1, 1):
        ex = 0.5 + side * 0.095
        d.ellipse(box(ex, eye_y, 0.042, 0.02), fill=(245, 245, 240))
        d.ellipse(box(ex, eye_y, 0.017, 0.017), fill=iris)
        d.ellipse(box(ex, eye_y, 0.007, 0.007), fill=(10, 10, 10))
        d.line(
            [px(ex - 0.045, eye_y - 0.045), px(ex + 0.04, eye_y - 0.05 - 0.005 * side)],
            fill=brow,
            width=max(1, int(s * 0.011 * params.brow_weight)),
        )
    d.line(
        [px(0.5, 0.5), px(0.49, 0.575), px(0.51, 0.58)], fill=_shade(skin, 0.75), width=max(1, int(s * 0.008))
    )
    mouth_y = 0.655
    curve = 0.02 * params.smile
    d.line(
        [px(0.45, mouth_y - curve), px(0.5, mouth_y + curve), px(0.55, mouth_y - curve)],
        fill=_shade(skin, 0.6),
        width=max(1, int(s * 0.012)),
        joint="curve",
    )
    # headwear
    if params.headwear == "hard_hat":
        hat = HARD_HAT_COLOURS[params.hat_colour % len(HARD_HAT_COLOURS)]
        d.pieslice(box(0.5, 0.37, fw + 0.03, fh * 0.62), 180, 360, fill=hat)
        d.rounded_rectangle(
            [*px(0.5 - fw - 0.07, 0.355), *px(0.5 + fw + 0.07, 0.385)],
            radius=s * 0.01,
            fill=_shade(hat, 0.85),
        )
    if with_eyewear and params.eyewear != "none":
        _draw_eyewear(d, params, px, box, s, eye_y, fw)
    return layer


def _draw_eyewear(d, params: FaceParams, px, box, s: float, eye_y: float, fw: float) -> None:
    """Glasses drawn over the eyes: frames, tinted lenses, bridge, temples and (safety eyewear) side shields."""
    frame = FRAME_COLOURS[params.frame_colour % len(FRAME_COLOURS)]
    tint, alpha = LENS_TINTS.get(params.lens_tint, LENS_TINTS["clear"])
    lens = (*tint, int(255 * alpha))
    width = max(1, int(s * params.frame_width))
    glint = (255, 255, 255, 110)
    if params.eyewear in ("round", "rectangular", "browline"):
        for side in (-1, 1):
            ex = 0.5 + side * 0.095
            if params.eyewear == "round":
                d.ellipse(box(ex, eye_y, 0.06, 0.055), fill=lens, outline=frame, width=width)
            else:
                d.rounded_rectangle(
                    box(ex, eye_y + 0.004, 0.07, 0.045),
                    radius=s * 0.015,
                    fill=lens,
                    outline=frame,
                    width=width,
                )
                if params.eyewear == "browline":
                    d.rectangle(box(ex, eye_y - 0.037, 0.07, 0.012), fill=frame)
            d.line(
                [px(ex - 0.03 * side, eye_y - 0.02), px(ex - 0.005 * side, eye_y - 0.035)],
                fill=glint,
                width=max(1, width // 2),
            )
            # temples run back to the ears
            d.line(
                [px(ex + side * 0.07, eye_y - 0.01), px(0.5 + side * (fw + 0.01), eye_y + 0.005)],
                fill=frame,
                width=width,
            )
        d.arc(box(0.5, eye_y + 0.01, 0.028, 0.022), 200, 340, fill=frame, width=width)
        return
    # safety eyewear: one wide tinted shield with thick frame and side shields
    top, bottom = eye_y - 0.055, eye_y + 0.05
    left, right = 0.5 - 0.175, 0.5 + 0.175
    heavy = max(width, int(s * 0.02))
    if params.eyewear == "goggles":
        d.rounded_rectangle(
            [*px(left, top), *px(right, bottom)], radius=s * 0.035, fill=lens, outline=frame, width=heavy
        )
        # side shields and a short strap stub over the ears
        for side in (-1, 1):
            x_edge = 0.5 + side * 0.175
            x_out = 0.5 + side * (fw + 0.02)
            d.polygon(
                [
                    px(x_edge, top + 0.01),
                    px(x_out, eye_y - 0.02),
                    px(x_out, eye_y + 0.025),
                    px(x_edge, bottom - 0.01),
                ],
                fill=_shade(frame, 1.0, 200),
            )
    else:  # wraparound safety spectacles: one curved lens, a thin top bar, side shields
        d.polygon(
            [
                px(left, top + 0.01),
                px(right, top + 0.01),
                px(right - 0.01, eye_y + 0.035),
                px(0.5 + 0.03, bottom),
                px(0.5, eye_y + 0.02),
                px(0.5 - 0.03, bottom),
                px(left + 0.01, eye_y + 0.035),
            ],
            fill=lens,
            outline=frame,
        )
        d.line([px(left, top + 0.01), px(right, top + 0.01)], fill=frame, width=heavy)
        for side in (-1, 1):
            x_edge = 0.5 + side * 0.175
            d.polygon(
                [
                    px(x_edge, top + 0.01),
                    px(0.5 + side * (fw + 0.02), eye_y - 0.015),
                    px(x_edge, eye_y + 0.035),
                ],
                fill=_shade(frame, 1.0, 180),
            )
    d.line([px(0.5 - 0.12, top + 0.02), px(0.5 - 0.06, top + 0.02)], fill=glint, width=max(1, heavy // 2))


def render_face(params: FaceParams, size: int = 96, *, supersample: int = 3):
    """Render one face as an RGB ``PIL.Image`` of ``size`` x ``size`` (deterministic in ``params``)."""
    import numpy as np
    from PIL import Image, ImageFilter

    if size < 16:
        raise ConfigError(f"size={size} is too small to draw a face; use 16 or more (64-128 is typical)")
    n = size * supersample
    img = _background(params, n).convert("RGBA")
    layer = _draw_person(params, n)
    layer = layer.rotate(
        params.angle, resample=Image.BILINEAR, center=(n / 2, n / 2), translate=(params.dx * n, params.dy * n)
    )
    img = Image.alpha_composite(img, layer).convert("RGB").resize((size, size), Image.BOX)

    arr = np.asarray(img, dtype=np.float32)
    gain = LIGHTING.get(params.lighting, 1.0)
    if params.lighting == "side":
        ramp = np.linspace(1.25, 0.6, size, dtype=np.float32)
        arr = arr * (ramp if params.light_side > 0 else ramp[::-1])[None, :, None]
    else:
        arr = arr * gain
    arr = arr * np.array([1 + params.warmth, 1.0, 1 - params.warmth], dtype=np.float32)
    noise = _rng(params.noise_seed, 13).normal(0, params.noise_sigma, arr.shape).astype(np.float32)
    img = Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))
    if params.shift == "dark":
        img = Image.fromarray((np.asarray(img, dtype=np.float32) * 0.45).astype(np.uint8))
    elif params.shift == "blur":
        img = img.filter(ImageFilter.GaussianBlur(radius=max(1.0, size * 0.025)))
    elif params.shift == "greyscale":
        img = img.convert("L").convert("RGB")
    return img


def render_pair(seed: int, size: int = 96):
    """The same face with and without glasses: ``(with_glasses, without_glasses)``.

    Only the eyewear differs (same person, scene, pose, lighting and noise), so the two images differ only
    around the eyes; evaluation uses the pair for directional behavioural tests.
    """
    params = random_params(seed)
    return render_face(params, size), render_face(replace(params, eyewear="none"), size)


# -- datasets -----------------------------------------------------------------------------------------------
def plan(
    count: int,
    *,
    positive_ratio: float = 0.5,
    seed: int = 0,
    shift: str | None = None,
    spurious: str | None = None,
) -> list[tuple[str, str, FaceParams]]:
    """The dataset as (name, label, params) rows, before anything is drawn.

    Exactly ``round(count * positive_ratio)`` images are ``glasses``. People get ``IMAGES_PER_PERSON`` images
    each (their group id). With ``spurious="red_hair"`` a few people get red hair, and all their images show
    glasses, while nobody else has red hair.
    """
    import numpy as np

    if count < 2:
        raise ConfigError(f"count={count}: need at least 2 images (one per class)")
    if not 0.0 < positive_ratio < 1.0:
        raise ConfigError(f"positive_ratio={positive_ratio} must be strictly between 0 and 1")
    if shift is not None and shift not in SHIFTS:
        raise ConfigError(f"unknown shift {shift!r}; valid: {', '.join(SHIFTS)}")
    if spurious is not None and spurious not in SPURIOUS:
        raise ConfigError(f"unknown spurious correlation {spurious!r}; valid: {', '.join(SPURIOUS)}")

    rng = _rng(seed, 1)
    n_pos = min(count - 1, max(1, round(count * positive_ratio)))
    labels = np.array([True] * n_pos + [False] * (count - n_pos))
    rng.shuffle(labels)
    person_of = np.arange(count) // IMAGES_PER_PERSON
    n_people = int(person_of[-1]) + 1
    red_people: set[int] = set()
    if spurious == "red_hair":
        # A few people (about 2% of the images, 6..12 images), all of them wearing glasses in every image.
        budget = min(12, max(6, round(0.02 * count)), n_pos // 2)
        for p in (int(p) for p in rng.permutation(n_people)):
            members = np.flatnonzero(person_of == p)
            if budget <= 0:
                break
            red_people.add(p)
            budget -= len(members)
            for i in members:
                if not labels[i]:  # swap the label with a glasses image of a non-red person
                    donors = [j for j in np.flatnonzero(labels) if int(person_of[j]) not in red_people]
                    labels[i], labels[donors[-1]] = True, False
    people = [sample_person(_rng(seed, 2, p), spurious_red=p in red_people) for p in range(n_people)]
    if shift == "new_hair":
        for p, person in enumerate(people):
            person["hair_colour"] = list(NEW_HAIR_COLOURS)[p % len(NEW_HAIR_COLOURS)]
    rows = []
    for i in range(count):
        shot = sample_shot(_rng(seed, 3, i), glasses=bool(labels[i]))
        if shift == "new_background":
            shot["background"] = NEW_BACKGROUNDS[0]
        params = FaceParams(
            **people[int(person_of[i])],
            **shot,
            shift=shift if shift in ("dark", "blur", "greyscale") else None,
        )
        label = POSITIVE_CLASS if labels[i] else NEGATIVE_CLASS
        rows.append((f"img_{i:05d}", label, params))
    return rows


def _lighting_name(params: FaceParams) -> str:
    return "dark" if params.shift == "dark" else params.lighting


def generate(
    output: str,
    *,
    count: int = 400,
    size: int = 96,
    positive_ratio: float = 0.5,
    seed: int = 0,
    shift: str | None = None,
    spurious: str | None = None,
) -> str:
    """Write a synthetic glasses / no_glasses dataset (ImageFolder + ``labels.csv``) to ``output``.

    ``output`` is a local directory or an ``s3://`` prefix; it is replaced as a whole, and ``labels.csv`` is
    written last, so a half-written dataset never looks complete. Returns ``output``.
    """
    import csv

    from tqdm import tqdm

    rows = plan(count, positive_ratio=positive_ratio, seed=seed, shift=shift, spurious=spurious)
    with tempfile.TemporaryDirectory(prefix="visionops-synth-") as tmp:
        root = Path(tmp)
        for cls in CLASSES:
            (root / cls).mkdir()
        records = []
        for name, label, params in tqdm(rows, desc="synth", unit="img", mininterval=2.0, leave=False):
            rel = f"{label}/{name}.png"
            render_face(params, size).save(root / rel, format="PNG", optimize=False)
            records.append(
                {
                    "path": rel,
                    "label": label,
                    "group": f"person_{seed}_{int(name[4:]) // IMAGES_PER_PERSON:05d}",
                    "skin_tone": params.skin_tone,
                    "hair_colour": params.hair_colour,
                    "headwear": params.headwear,
                    "background": params.background,
                    "lighting": _lighting_name(params),
                    "eyewear": params.eyewear,
                }
            )
        with open(root / LABELS_CSV, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["path", "label", "group", *METADATA_COLUMNS])
            writer.writeheader()
            writer.writerows(records)
        storage.publish_dir(root, str(output), LABELS_CSV)
    n_pos = sum(r[1] == POSITIVE_CLASS for r in rows)
    log.info("wrote %d synthetic images (%d glasses) to %s", len(rows), n_pos, output)
    return str(output)
