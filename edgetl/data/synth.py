"""Synthetic road-sign crops from two "cities", for the offline demo and the tests.

city-a is a clean daytime catalogue: European-style signs (red-rimmed triangles, blue
mandatory discs), sky backgrounds, mild lighting changes. city-b is another country's
streets: its own palette (crimson, teal, cream, yellow warning diamonds), its own pictogram
style (thick strokes, chevron arrows, condensed digits), and real capture trouble: night,
rain, fog, motion blur, sensor noise, JPEG artefacts, perspective, partial occlusion and
cluttered backgrounds. The class of a sign is what it means, not how it looks, so a model
trained on city-a alone loses a lot on city-b (benchmarks/domain_gap.py measures it).

Each image is drawn from its own seeded generator (seed, domain, class, index), so the
output is identical per seed whatever the order or number of processes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from edgetl import fsutil
from edgetl.errors import DataError

DOMAINS = ("city-a", "city-b")
CLASSES = (
    "stop",
    "yield",
    "no-entry",
    "speed-limit-30",
    "speed-limit-50",
    "no-parking",
    "curve-left",
    "curve-right",
    "pedestrian-crossing",
    "general-caution",
    "turn-left",
    "turn-right",
    "ahead-only",
    "priority-road",
    "parking",
)
SS = 2  # supersampling factor: signs are drawn at SS x size, then downsampled (anti-aliasing)


@dataclass(frozen=True)
class Style:
    """How one city draws its signs."""

    red: tuple[int, int, int]
    blue: tuple[int, int, int]
    white: tuple[int, int, int]
    yellow: tuple[int, int, int]
    black: tuple[int, int, int]
    warning: str  # "triangle" (red rim, white) or "diamond" (yellow, black rim)
    stroke: float  # pictogram stroke width, relative to the sign radius
    arrow: str  # "solid" head or open "chevron"
    digits_squeeze: float  # horizontal scale of speed-limit digits


STYLES = {
    "city-a": Style(
        red=(200, 22, 32), blue=(24, 72, 180), white=(246, 246, 246), yellow=(250, 200, 25),
        black=(22, 22, 22), warning="triangle", stroke=0.13, arrow="solid", digits_squeeze=1.0,
    ),
    "city-b": Style(
        red=(160, 30, 70), blue=(12, 115, 130), white=(228, 222, 200), yellow=(255, 214, 0),
        black=(35, 30, 25), warning="diamond", stroke=0.2, arrow="chevron", digits_squeeze=0.7,
    ),
}


def class_dir_name(label: int) -> str:
    return f"{label:02d}-{CLASSES[label]}"


# --- geometry -----------------------------------------------------------------------------

def _poly(cx: float, cy: float, r: float, n: int, rot: float) -> list[tuple[float, float]]:
    angles = [rot + 2 * math.pi * k / n for k in range(n)]
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles]


def _shape(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if kind == "octagon":
        return _poly(cx, cy, r, 8, math.pi / 8)
    if kind == "triangle":  # point up
        return _poly(cx, cy + 0.15 * r, 1.1 * r, 3, -math.pi / 2)
    if kind == "inverted":  # point down
        return _poly(cx, cy - 0.15 * r, 1.1 * r, 3, math.pi / 2)
    if kind == "diamond":
        return _poly(cx, cy, r, 4, 0.0)
    if kind == "square":
        return _poly(cx, cy, r * 1.3, 4, math.pi / 4)
    raise ValueError(kind)


def _shrink(points, cx, cy, f):
    return [(cx + (x - cx) * f, cy + (y - cy) * f) for x, y in points]


def _arrow(d: ImageDraw.ImageDraw, cx, cy, r, angle, colour, style: Style) -> None:
    """An arrow through the centre pointing at `angle` (radians, 0 = right, -pi/2 = up)."""
    w = max(2, int(style.stroke * r * 1.2))
    ux, uy = math.cos(angle), math.sin(angle)
    tail = (cx - ux * 0.6 * r, cy - uy * 0.6 * r)
    tip = (cx + ux * 0.6 * r, cy + uy * 0.6 * r)
    px, py = -uy, ux
    head = 0.35 * r
    base = (tip[0] - ux * head, tip[1] - uy * head)
    if style.arrow == "solid":
        d.line([tail, base], fill=colour, width=w)
        d.polygon([tip, (base[0] + px * head * 0.8, base[1] + py * head * 0.8),
                   (base[0] - px * head * 0.8, base[1] - py * head * 0.8)], fill=colour)
    else:
        d.line([tail, tip], fill=colour, width=w)
        for s in (1, -1):
            d.line([tip, (base[0] + s * px * head, base[1] + s * py * head)], fill=colour, width=w)


def _curve(d, cx, cy, r, left: bool, colour, style: Style) -> None:
    """A road bending left or right as it goes away: a parabola with an arrow head."""
    w = max(2, int(style.stroke * r))
    s = -1 if left else 1
    pts = [(cx - s * 0.2 * r + s * 0.5 * r * (t / 10) ** 2, cy + 0.45 * r - 0.8 * r * t / 10) for t in range(11)]
    d.line(pts, fill=colour, width=w, joint="curve")
    tx, ty = pts[-1]
    head = 0.28 * r
    d.polygon([(tx + s * head * 0.9, ty - head * 0.6), (tx - s * head * 0.5, ty - head * 0.5),
               (tx + s * head * 0.2, ty + head * 0.6)], fill=colour)


def _walker(d, cx, cy, r, colour, style: Style) -> None:
    w = max(2, int(style.stroke * r * 0.8))
    d.ellipse([cx - 0.1 * r, cy - 0.55 * r, cx + 0.1 * r, cy - 0.35 * r], fill=colour)
    d.line([(cx, cy - 0.3 * r), (cx - 0.05 * r, cy + 0.1 * r)], fill=colour, width=w)
    d.line([(cx - 0.05 * r, cy + 0.1 * r), (cx - 0.3 * r, cy + 0.5 * r)], fill=colour, width=w)
    d.line([(cx - 0.05 * r, cy + 0.1 * r), (cx + 0.25 * r, cy + 0.5 * r)], fill=colour, width=w)
    d.line([(cx - 0.3 * r, cy - 0.1 * r), (cx + 0.25 * r, cy - 0.2 * r)], fill=colour, width=w)


_FONTS: dict[int, ImageFont.ImageFont] = {}


def _font(px: int):
    if px not in _FONTS:
        _FONTS[px] = ImageFont.load_default(size=px)
    return _FONTS[px]


def _text(img: Image.Image, cx, cy, r, text: str, colour, style: Style, bold: bool = False) -> None:
    """Text centred at (cx, cy), squeezed horizontally by the style (another city's typeface)."""
    px = max(6, int(r * (0.75 if len(text) <= 2 else 0.5)))
    font = _font(px)
    stroke = max(1, int(px * 0.08)) if bold or style.digits_squeeze < 1 else 0
    box = font.getbbox(text, stroke_width=stroke)
    tw, th = box[2] - box[0] + 2, box[3] - box[1] + 2
    layer = Image.new("L", (tw, th), 0)
    ImageDraw.Draw(layer).text((-box[0] + 1, -box[1] + 1), text, fill=255, font=font,
                               stroke_width=stroke, stroke_fill=255)
    nw = max(1, int(tw * style.digits_squeeze))
    layer = layer.resize((nw, th), Image.Resampling.BILINEAR)
    img.paste(Image.new("RGBA", layer.size, colour + (255,)), (int(cx - nw / 2), int(cy - th / 2)), layer)


# --- one sign -----------------------------------------------------------------------------

def _draw_sign(img: Image.Image, label: int, style: Style, cx: float, cy: float, r: float) -> None:
    d = ImageDraw.Draw(img)
    s = style
    name = CLASSES[label]
    ink = s.black

    def rimmed_disc(rim, fill, rim_frac=0.18):
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rim)
        ri = r * (1 - rim_frac)
        d.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=fill)

    def warning_plate():
        if s.warning == "triangle":
            outer = _shape("triangle", cx, cy, r)
            d.polygon(outer, fill=s.red)
            d.polygon(_shrink(outer, cx, cy + 0.15 * r, 0.7), fill=s.white)
        else:
            outer = _shape("diamond", cx, cy, r)
            d.polygon(outer, fill=ink)
            d.polygon(_shrink(outer, cx, cy, 0.88), fill=s.yellow)

    if name == "stop":
        oct_ = _shape("octagon", cx, cy, r)
        d.polygon(oct_, fill=s.white)
        d.polygon(_shrink(oct_, cx, cy, 0.9), fill=s.red)
        if s.warning == "triangle":
            _text(img, cx, cy, r, "STOP", s.white, s, bold=True)
        else:  # two short lines of lettering
            _text(img, cx, cy - 0.2 * r, r * 0.8, "ALTO", s.white, s)
            d.line([(cx - 0.45 * r, cy + 0.3 * r), (cx + 0.45 * r, cy + 0.3 * r)],
                   fill=s.white, width=max(2, int(0.1 * r)))
    elif name == "yield":
        tri = _shape("inverted", cx, cy, r)
        d.polygon(tri, fill=s.red)
        d.polygon(_shrink(tri, cx, cy - 0.15 * r, 0.62), fill=s.white if s.warning == "triangle" else s.yellow)
    elif name == "no-entry":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=s.red)
        h = 0.16 * r if s.warning == "triangle" else 0.24 * r
        d.rectangle([cx - 0.68 * r, cy - h, cx + 0.68 * r, cy + h], fill=s.white)
    elif name.startswith("speed-limit"):
        rimmed_disc(s.red, s.white)
        _text(img, cx, cy, r, name.rsplit("-", 1)[1], ink, s)
    elif name == "no-parking":
        rimmed_disc(s.red, s.blue)
        w = max(2, int(0.16 * r))
        d.line([(cx - 0.6 * r, cy - 0.6 * r), (cx + 0.6 * r, cy + 0.6 * r)], fill=s.red, width=w)
        if s.warning == "diamond":  # this city uses a cross
            d.line([(cx - 0.6 * r, cy + 0.6 * r), (cx + 0.6 * r, cy - 0.6 * r)], fill=s.red, width=w)
    elif name in ("curve-left", "curve-right"):
        warning_plate()
        _curve(d, cx, cy + 0.1 * r, 0.6 * r, name == "curve-left", ink, s)
    elif name == "pedestrian-crossing":
        warning_plate()
        _walker(d, cx, cy + 0.1 * r, 0.75 * r, ink, s)
    elif name == "general-caution":
        warning_plate()
        w = max(2, int(s.stroke * r * 0.9))
        d.line([(cx, cy - 0.3 * r), (cx, cy + 0.18 * r)], fill=ink, width=w)
        d.ellipse([cx - w * 0.6, cy + 0.3 * r - w * 0.6, cx + w * 0.6, cy + 0.3 * r + w * 0.6], fill=ink)
    elif name in ("turn-left", "turn-right", "ahead-only"):
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=s.blue)
        angle = {"turn-left": math.pi, "turn-right": 0.0, "ahead-only": -math.pi / 2}[name]
        _arrow(d, cx, cy, r, angle, s.white, s)
    elif name == "priority-road":
        dia = _shape("diamond", cx, cy, r)
        d.polygon(dia, fill=s.white if s.warning == "triangle" else ink)
        d.polygon(_shrink(dia, cx, cy, 0.62), fill=s.yellow)
    elif name == "parking":
        sq = _shape("square", cx, cy, r * 0.75)
        d.polygon(sq, fill=s.white)
        d.polygon(_shrink(sq, cx, cy, 0.88), fill=s.blue)
        _text(img, cx, cy, r, "P", s.white, s, bold=True)
    else:  # pragma: no cover - CLASSES and this function are kept together
        raise AssertionError(name)


# --- scene and camera ---------------------------------------------------------------------

def _background(rng: np.random.Generator, n: int, cluttered: bool) -> Image.Image:
    top = rng.uniform([90, 140, 200], [150, 190, 240])
    bottom = rng.uniform([180, 190, 200], [235, 235, 240])
    t = np.linspace(0, 1, n, dtype=np.float32)[:, None, None]
    sky = (top * (1 - t) + bottom * t) * np.ones((1, n, 1), np.float32)
    img = Image.fromarray(sky.astype(np.uint8))
    d = ImageDraw.Draw(img)
    if rng.random() < 0.4:  # a tree line or ground band
        y = int(rng.uniform(0.6, 0.9) * n)
        d.rectangle([0, y, n, n], fill=tuple(int(v) for v in rng.uniform([60, 90, 50], [110, 140, 90])))
    if cluttered:  # buildings, poles, other signs' edges, cables
        for _ in range(int(rng.integers(4, 9))):
            x0, y0 = rng.uniform(-0.2, 1.0, 2) * n
            w, h = rng.uniform(0.1, 0.6, 2) * n
            colour = tuple(int(v) for v in rng.integers(30, 220, 3))
            if rng.random() < 0.7:
                d.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
            else:
                d.line([(x0, y0), (x0 + w, y0 + h)], fill=colour, width=int(rng.integers(1, 4)))
    return img


def _perspective_coeffs(src, dst) -> list[float]:
    """Coefficients for Image.transform(PERSPECTIVE) mapping output points `dst` to input points `src`."""
    a = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    b = np.asarray(src, np.float64).reshape(8)
    return np.linalg.solve(np.asarray(a, np.float64), b).tolist()


def render(domain: str, label: int, index: int, size: int = 64, seed: int = 0) -> Image.Image:
    """One RGB road-sign crop of class `label` from `domain`; pure function of its arguments."""
    city_b = domain == "city-b"
    style = STYLES[domain]
    rng = np.random.default_rng([seed, DOMAINS.index(domain), label, index])
    n = size * SS

    # the sign, on a transparent layer, at a random scale and offset, slightly rotated
    sign = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    r = n * rng.uniform(0.3, 0.42)
    cx, cy = n / 2 + rng.uniform(-0.06, 0.06, 2) * n
    _draw_sign(sign, label, style, cx, cy, r)

    # one warp for a slight roll about the sign's centre and an off-axis camera (strongly
    # so on city-b's streets): the layer's corners move, and PIL maps the quad back
    roll = math.radians(rng.uniform(-8, 8))
    jitter = (0.16 if city_b else 0.05) * n
    corners = [(0, 0), (n, 0), (n, n), (0, n)]
    moved = [(cx + (x - cx) * math.cos(roll) - (y - cy) * math.sin(roll) + rng.uniform(-jitter, jitter),
              cy + (x - cx) * math.sin(roll) + (y - cy) * math.cos(roll) + rng.uniform(-jitter, jitter))
             for x, y in corners]
    sign = sign.transform((n, n), Image.Transform.PERSPECTIVE, _perspective_coeffs(corners, moved),
                          resample=Image.Resampling.BILINEAR)

    scene = _background(rng, n, cluttered=city_b).convert("RGBA")
    scene.alpha_composite(sign)
    if city_b and rng.random() < 0.35:  # partial occlusion: a branch, a pole, a parked van
        d = ImageDraw.Draw(scene)
        colour = tuple(int(v) for v in rng.integers(20, 120, 3)) + (255,)
        side = rng.integers(4)
        span = rng.uniform(0.2, 0.35) * n
        box = [[0, 0, span, n], [n - span, 0, n, n], [0, 0, n, span], [0, n - span, n, n]][side]
        d.rectangle(box, fill=colour)
    img = scene.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)

    x = np.asarray(img, np.float32)
    if city_b:
        x = _city_b_conditions(rng, x, size)
    else:
        x = x * rng.uniform(0.85, 1.15) + rng.normal(0, rng.uniform(0, 3), x.shape)
    img = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))

    blur_p = 0.5 if city_b else 0.15
    if rng.random() < blur_p:  # motion blur: a short horizontal or vertical smear
        k = np.zeros((5, 5), np.float32)
        if rng.random() < 0.5:
            k[2, :] = 1
        else:
            k[:, 2] = 1
        img = img.filter(ImageFilter.Kernel((5, 5), k.flatten().tolist(), scale=5))
    if city_b:  # the city's cameras stream JPEG
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(15, 45)))
        buf.seek(0)
        img = Image.open(buf).convert("RGB")
    return img


def _city_b_conditions(rng: np.random.Generator, x: np.ndarray, size: int) -> np.ndarray:
    """Night, rain, fog and a noisy sensor, on a float HWC image."""
    condition = rng.choice(["night", "rain", "fog", "overcast"], p=[0.35, 0.25, 0.25, 0.15])
    if condition == "night":
        x = 255.0 * (x / 255.0) ** rng.uniform(1.6, 2.4) * rng.uniform(0.35, 0.6)
        x *= np.asarray([0.85, 0.9, 1.1], np.float32)
        if rng.random() < 0.6:  # headlight glare
            gy, gx = np.mgrid[0:size, 0:size].astype(np.float32)
            cy, cx = rng.uniform(0, size, 2)
            x += rng.uniform(60, 140) * np.exp(-((gx - cx) ** 2 + (gy - cy) ** 2) / (2 * (size * 0.18) ** 2))[..., None]
    elif condition == "rain":
        x = x * 0.8 + 20
        streaks = np.zeros(x.shape[:2], np.float32)
        for _ in range(int(rng.integers(15, 40))):
            c, r0 = rng.integers(0, size, 2)
            streaks[r0:r0 + int(rng.integers(4, 10)), c] = rng.uniform(40, 90)
        x += streaks[..., None]
    elif condition == "fog":
        a = rng.uniform(0.35, 0.6)
        x = x * (1 - a) + rng.uniform(170, 215) * a
    else:
        x = x * rng.uniform(0.6, 0.8) + 25
    return x + rng.normal(0, rng.uniform(4, 14), x.shape)


MAX_PER_CLASS = 100_000  # 1.5 M images: more than any demo or test needs, and a typo stops here


def synthesize(
    out: str | Path,
    domain: str,
    per_class: int,
    size: int = 64,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write `per_class` PNGs per class under OUT/<NN-class>/; all-or-nothing (temp dir, then rename)."""
    if domain not in DOMAINS:
        raise DataError(f"unknown domain {domain!r}", f"available: {', '.join(DOMAINS)}")
    if not 1 <= per_class <= MAX_PER_CLASS:
        raise DataError(f"--per-class must be between 1 and {MAX_PER_CLASS}, not {per_class}", "e.g. --per-class 50")
    if seed < 0:
        raise DataError(f"--seed must be >= 0, not {seed}", "e.g. --seed 1")
    if not 16 <= size <= 512:
        raise DataError(f"--size must be between 16 and 512 px, not {size}", "e.g. --size 64")
    out = fsutil.claim(out, fsutil.DATASET)
    with fsutil.staged_dir(out, fsutil.DATASET) as tmp:
        for label in range(len(CLASSES)):
            folder = tmp / class_dir_name(label)
            folder.mkdir()
            for i in range(per_class):
                render(domain, label, i, size, seed).save(folder / f"{domain}-{seed}-{i:05d}.png", compress_level=1)
                if progress:
                    progress(1)
    return out
