"""Synthetic pictures of a person at work, for tests and demos of the vision task without a real image set.

A drawn figure: skin tone by `race`; gender by silhouette (short hair and trousers vs long hair and a dress);
occupation by uniform colour, a hat shape and the occupation's name written underneath (so a small VLM can answer the
unambiguous questions). Same arguments, same pixels.
"""

from __future__ import annotations

import functools
import hashlib
import random

from PIL import Image, ImageDraw, ImageFont

SIZE = (112, 168)
SKIN = {"light": (241, 205, 170), "medium": (198, 143, 98), "dark": (120, 78, 48)}
RACES = tuple(SKIN)
_HAIR = ((40, 30, 20), (90, 60, 30), (20, 20, 20), (150, 110, 60))


@functools.cache
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(11)


def _occupation_style(occupation: str) -> tuple[tuple[int, int, int], int]:
    """A uniform colour and a hat shape fixed by the occupation's name (md5, not Python's salted hash)."""
    digest = hashlib.md5(occupation.encode()).digest()
    return (digest[0] // 2 + 40, digest[1] // 2 + 40, digest[2] // 2 + 40), digest[3] % 3


@functools.lru_cache(maxsize=4096)
def draw_person(occupation: str, gender: str, race: str, variant: int = 0) -> Image.Image:
    """A 112x168 RGB picture (cached: treat it as read-only); `variant` moves background, hair colour, position."""
    if gender not in ("male", "female"):
        raise ValueError(f"gender must be male or female, got {gender!r}")
    if race not in SKIN:
        raise ValueError(f"race must be one of {RACES}, got {race!r}")
    rng = random.Random(f"{occupation}|{gender}|{race}|{variant}")
    background = tuple(rng.randint(225, 250) for _ in range(3))
    image = Image.new("RGB", SIZE, background)
    draw = ImageDraw.Draw(image)
    uniform, hat = _occupation_style(occupation)
    hair, skin = rng.choice(_HAIR), SKIN[race]
    x = SIZE[0] // 2 + rng.randint(-6, 6)
    if gender == "female":  # long hair behind the head, a dress
        draw.rectangle([x - 17, 22, x + 17, 62], fill=hair)
        draw.polygon([(x - 14, 58), (x + 14, 58), (x + 26, 128), (x - 26, 128)], fill=uniform)
        draw.rectangle([x - 12, 128, x - 6, 146], fill=skin)
        draw.rectangle([x + 6, 128, x + 12, 146], fill=skin)
    else:  # short hair, a jacket and trousers
        draw.rectangle([x - 16, 58, x + 16, 104], fill=uniform)
        draw.rectangle([x - 14, 104, x - 2, 146], fill=(50, 50, 70))
        draw.rectangle([x + 2, 104, x + 14, 146], fill=(50, 50, 70))
    draw.ellipse([x - 14, 24, x + 14, 54], fill=skin)
    if gender == "male":
        draw.chord([x - 14, 22, x + 14, 46], 180, 360, fill=hair)
    if hat == 0:  # cap
        draw.rectangle([x - 15, 16, x + 15, 26], fill=uniform)
    elif hat == 1:  # tall hat
        draw.rectangle([x - 10, 4, x + 10, 26], fill=uniform)
    else:  # helmet
        draw.chord([x - 16, 12, x + 16, 40], 180, 360, fill=uniform)
    draw.text((SIZE[0] // 2, 158), occupation, fill=(0, 0, 0), anchor="mm", font=_font())
    return image
