"""Drawing for ``synthetic-vehicles``: vehicles, drivers, plates, scenes and cameras.

Split from :mod:`patrol_compress.data.synthetic` (which builds the dataset,
splits and cache) so each module has one job. See that module's docstring for
what is drawn and why; everything here is deterministic given the numpy
Generator it is handed.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

MIN_CANVAS = 256
"""Smallest supersampled canvas (px); finer detail than this is lost anyway."""
CAMERA_DISTANCE = 5.0
"""Camera distance in vehicle widths: sets how strongly the sides converge."""

Colour = tuple[int, int, int]
Point = tuple[float, float]
P3 = tuple[float, float, float]

BODY_KINDS = ("sedan", "suv", "van", "truck", "hatchback")
SCENES = ("road", "grass", "building", "parking")
PLATE_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"
PLATE_FORMATS = ("LL DDD L", "LLL DDD", "LL DD LLL", "DLL DDD", "LL DDDD")
SKIN_TONES: tuple[Colour, ...] = (
    (255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 134, 96),
    (160, 105, 70), (120, 78, 50), (88, 57, 38),
)  # fmt: skip
HAIR_COLOURS: tuple[Colour, ...] = (
    (22, 18, 16), (62, 40, 24), (112, 72, 36), (205, 165, 95),
    (165, 62, 30), (150, 150, 150), (232, 230, 222),
)  # fmt: skip
EYE_COLOURS: tuple[Colour, ...] = ((70, 45, 25), (45, 95, 165), (60, 120, 70), (25, 25, 25))
HAIR_STYLES = ("short", "long", "bald", "cap", "curly")
OCCLUSION_RATE = 0.15
"""Share of images with a pole in front of the vehicle."""
TRUCK_CAB = 0.95
"""Length of a box truck's cab; the cargo box starts a little behind it."""


# --------------------------------------------------------------------------- identities


@dataclass(frozen=True)
class Shape:
    """Body proportions in vehicle widths (width = 1); heights from the ground."""

    kind: str
    clearance: float
    body_h: float
    cabin_h: float
    cab_top: float  # cabin width at the roof
    cab_bot: float  # cabin width at the belt line
    length: float
    hood: float  # depth from the front to the windscreen base
    trunk: float  # depth from the rear to the rear-window base
    slant_f: float  # depth taken by the windscreen
    slant_r: float  # depth taken by the rear window
    wheel_r: float
    box_h: float = 0.0  # cargo box height (box trucks only)

    @property
    def belt(self) -> float:
        return self.clearance + self.body_h

    @property
    def top(self) -> float:
        return self.belt + self.cabin_h


SHAPES = {
    "sedan": Shape("sedan", 0.10, 0.30, 0.33, 0.64, 0.90, 2.5, 0.70, 0.45, 0.35, 0.30, 0.17),
    "hatchback": Shape(
        "hatchback", 0.10, 0.30, 0.34, 0.72, 0.90, 2.0, 0.55, 0.06, 0.33, 0.18, 0.16
    ),
    "suv": Shape("suv", 0.16, 0.38, 0.34, 0.82, 0.94, 2.5, 0.60, 0.06, 0.25, 0.12, 0.21),
    "van": Shape("van", 0.12, 0.44, 0.46, 0.90, 0.97, 2.8, 0.30, 0.02, 0.22, 0.04, 0.19),
    "truck": Shape("truck", 0.18, 0.42, 0.38, 0.86, 0.95, 3.2, 0.22, 0.0, 0.16, 0.0, 0.22, 1.28),
}


@dataclass(frozen=True)
class Driver:
    skin: Colour
    hair: Colour
    hair_style: str
    eyes: Colour
    shirt: Colour
    cap: Colour
    glasses: bool
    beard: bool


@dataclass(frozen=True)
class Vehicle:
    shape: Shape
    paint: Colour
    accent: Colour
    trim: Colour  # bumpers and grille surround
    stripes: str  # none | twin | side | twotone | lower
    roof: str  # none | rack | sign
    rim: Colour
    rim_style: str  # spokes | solid | star | dish
    spokes: int
    mirrors: Colour
    headlights: str  # round | rect | slit | twin
    taillights: str  # bar | vertical | round
    grille: str  # bars | mesh | vertical | slot
    fog: bool
    spoiler: bool
    spare: bool
    plate: str
    plate_bg: Colour
    glass_shade: float  # windows from clear to tinted
    driver_x: float  # driver's seat, vehicle frame seen from the front
    driver: Driver


def _hsv(h: float, s: float, v: float) -> Colour:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (round(r * 255), round(g * 255), round(b * 255))


def _shade(c: Colour, f: float) -> Colour:
    r, g, b = (min(255, max(0, round(x * f))) for x in c)
    return (r, g, b)


def _mix(a: Colour, b: Colour, t: float) -> Colour:
    r, g, bl = (round(x + (y - x) * t) for x, y in zip(a, b, strict=True))
    return (r, g, bl)


def _pick(rng: np.random.Generator, items: Sequence[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _pick_colour(rng: np.random.Generator, items: Sequence[Colour]) -> Colour:
    return items[int(rng.integers(len(items)))]


def _paint(rng: np.random.Generator) -> Colour:
    """Car-like colours: mostly neutral (white/silver/grey/black), the rest any hue.

    As on real roads, many vehicles share a neutral colour and a body type, so
    colour alone cannot tell them apart; details and the plate must.
    """
    if rng.random() < 0.55:
        value = float(rng.choice([0.12, 0.32, 0.55, 0.75, 0.94])) + rng.uniform(-0.04, 0.04)
        return _hsv(rng.random(), rng.uniform(0.0, 0.08), value)
    return _hsv(rng.random(), rng.uniform(0.45, 0.95), rng.uniform(0.38, 0.92))


def plate_string(rng: np.random.Generator) -> str:
    fmt = _pick(rng, PLATE_FORMATS)
    out = []
    for ch in fmt:
        if ch == "L":
            out.append(PLATE_LETTERS[int(rng.integers(len(PLATE_LETTERS)))])
        elif ch == "D":
            out.append(str(int(rng.integers(10))))
        else:
            out.append(ch)
    return "".join(out)


def sample_driver(rng: np.random.Generator) -> Driver:
    return Driver(
        skin=_pick_colour(rng, SKIN_TONES),
        hair=_pick_colour(rng, HAIR_COLOURS),
        hair_style=_pick(rng, HAIR_STYLES),
        eyes=_pick_colour(rng, EYE_COLOURS),
        shirt=_hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.25, 0.95)),
        cap=_hsv(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.3, 0.9)),
        glasses=bool(rng.random() < 0.3),
        beard=bool(rng.random() < 0.25),
    )


def sample_vehicle(rng: np.random.Generator) -> Vehicle:
    """One identity: body, colours, details, plate and driver."""
    kind = _pick(rng, BODY_KINDS)
    base = SHAPES[kind]
    jitter = {
        f.name: getattr(base, f.name) * rng.uniform(0.93, 1.07)
        for f in fields(base)
        if f.name not in ("kind", "length", "cab_bot")
    }
    shape = replace(base, **jitter)
    shape = replace(shape, cab_top=min(shape.cab_top, shape.cab_bot - 0.04))
    paint = _paint(rng)
    neutral = (rng.random() < 0.5) and kind != "truck"
    accent = _hsv(rng.random(), 0.05, 0.95) if neutral else _paint(rng)
    trim = _pick_colour(rng, ((30, 30, 32), (95, 95, 100), _shade(paint, 0.8)))
    roof_choices = ("none",) if kind == "truck" else ("none", "none", "rack", "sign")
    return Vehicle(
        shape=shape,
        paint=paint,
        accent=accent,
        trim=trim,
        stripes=_pick(rng, ("none", "none", "twin", "side", "twotone", "lower")),
        roof=_pick(rng, roof_choices),
        rim=_pick_colour(rng, ((190, 190, 195), (40, 40, 42), (200, 165, 70), (120, 120, 128))),
        rim_style=_pick(rng, ("spokes", "solid", "star", "dish")),
        spokes=int(rng.integers(4, 9)),
        mirrors=_pick_colour(rng, (paint, (25, 25, 28), accent)),
        headlights=_pick(rng, ("round", "rect", "slit", "twin")),
        taillights=_pick(rng, ("bar", "vertical", "round")),
        grille=_pick(rng, ("bars", "mesh", "vertical", "slot")),
        fog=bool(rng.random() < 0.4),
        spoiler=bool(rng.random() < 0.35) and kind in ("sedan", "hatchback"),
        spare=bool(rng.random() < 0.5) and kind == "suv",
        plate=plate_string(rng),
        plate_bg=_pick_colour(rng, ((238, 238, 232), (238, 238, 232), (245, 205, 40))),
        glass_shade=float(rng.uniform(0.85, 1.2)),
        driver_x=0.2 if rng.random() < 0.5 else -0.2,
        driver=sample_driver(rng),
    )


# ------------------------------------------------------------------------------ cameras


@dataclass(frozen=True, eq=False)
class Camera:
    """A fixed camera: viewpoint, framing, static background, optics and light."""

    view: str  # front | rear
    yaw: float
    height: float  # camera height in vehicle widths
    fill: float  # projected vehicle width / image width
    dx: float
    dy: float
    background: Image.Image
    ground: Colour
    brightness: float
    contrast: float
    gamma: float
    cast: tuple[float, float, float]
    blur: float  # Gaussian radius in output pixels
    noise: float  # noise std in 0..255 units


def _smooth_noise(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    """Blotchy texture in [-1, 1]: coarse random values, bilinearly upsampled."""
    n = max(2, size // cell + 2)
    small = Image.fromarray(rng.uniform(-1.0, 1.0, (n, n)).astype(np.float32), mode="F")
    return np.asarray(small.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def _texture(
    rng: np.random.Generator, size: int, colour: Colour, blotch: float, grain: float
) -> np.ndarray:
    base = np.asarray(colour, dtype=np.float32)[None, None, :]
    light = 1.0 + blotch * _smooth_noise(rng, size, max(4, size // 10))
    light = light + grain * rng.standard_normal((size, size)).astype(np.float32)
    return base * light[:, :, None]


def _sky(rng: np.random.Generator, size: int, rows: int) -> np.ndarray:
    """A vertical gradient from a blue or overcast zenith to a pale horizon."""
    hue, sat, val = rng.uniform(0.55, 0.62), rng.uniform(0.05, 0.5), rng.uniform(0.7, 1.0)
    top = np.asarray(_hsv(hue, sat, val), dtype=np.float32)
    low = top * 0.4 + 235.0 * 0.6
    t = np.linspace(0.0, 1.0, rows, dtype=np.float32)[:, None, None]
    return np.broadcast_to(top * (1 - t) + low * t, (rows, size, 3)).astype(np.float32)


def make_background(rng: np.random.Generator, size: int, scene: str) -> tuple[Image.Image, Colour]:
    """A static scene (canvas ``size``) and its ground colour (for the shadow)."""
    horizon = int(size * rng.uniform(0.28, 0.5))
    if scene == "road":
        ground = _hsv(0, 0, rng.uniform(0.28, 0.45))
    elif scene == "grass":
        ground = _hsv(rng.uniform(0.2, 0.32), rng.uniform(0.45, 0.75), rng.uniform(0.35, 0.6))
    elif scene == "building":
        ground = _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.0, 0.15), rng.uniform(0.55, 0.75))
    else:
        ground = _hsv(0, 0, rng.uniform(0.55, 0.72))
    arr = _texture(rng, size, ground, 0.12, 0.06)
    if scene == "building":
        wall = _hsv(rng.uniform(0.0, 0.12), rng.uniform(0.1, 0.55), rng.uniform(0.45, 0.85))
        arr[:horizon] = _texture(rng, size, wall, 0.08, 0.05)[:horizon]
    else:
        arr[:horizon] = _sky(rng, size, horizon)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")
    d = ImageDraw.Draw(img)
    if scene == "building":
        _windows(rng, d, size, horizon)
    else:
        _skyline(rng, d, size, horizon, trees=scene == "grass")
    if scene == "road":
        _lanes(rng, d, size, horizon)
    elif scene == "parking":
        _bays(rng, d, size, horizon)
    elif scene == "grass":
        _tufts(rng, d, size, horizon, ground)
    else:
        _tiles(d, size, horizon, _shade(ground, 0.8))
    return img, ground


def _windows(rng: np.random.Generator, d: ImageDraw.ImageDraw, size: int, horizon: int) -> None:
    glass = _hsv(rng.uniform(0.5, 0.65), rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.5))
    frame = _hsv(0, 0, rng.uniform(0.6, 0.95))
    w = size * rng.uniform(0.08, 0.14)
    h = w * rng.uniform(0.9, 1.5)
    gap = w * rng.uniform(0.4, 0.9)
    x0 = -rng.uniform(0, w + gap)
    y = horizon - h - gap * 0.6
    while y + h > 0:
        x = x0
        while x < size:
            d.rectangle([x - 2, y - 2, x + w + 2, y + h + 2], fill=frame)
            d.rectangle([x, y, x + w, y + h], fill=_shade(glass, rng.uniform(0.8, 1.3)))
            x += w + gap
        y -= h + gap
    d.rectangle([0, horizon - 4, size, horizon], fill=_shade(frame, 0.7))


def _skyline(
    rng: np.random.Generator, d: ImageDraw.ImageDraw, size: int, horizon: int, trees: bool
) -> None:
    x = -rng.uniform(0, 20)
    while x < size:
        if trees:
            r = size * rng.uniform(0.05, 0.1)
            col = _hsv(rng.uniform(0.22, 0.36), rng.uniform(0.4, 0.8), rng.uniform(0.2, 0.45))
            d.ellipse([x - r, horizon - 2.2 * r, x + r, horizon + 0.2 * r], fill=col)
            x += r * rng.uniform(0.8, 1.6)
        else:
            w = size * rng.uniform(0.08, 0.2)
            h = horizon * rng.uniform(0.2, 0.75)
            col = _hsv(rng.uniform(0.0, 0.7), rng.uniform(0.0, 0.25), rng.uniform(0.4, 0.75))
            d.rectangle([x, horizon - h, x + w, horizon], fill=col)
            x += w + size * rng.uniform(0.0, 0.06)


def _lanes(rng: np.random.Generator, d: ImageDraw.ImageDraw, size: int, horizon: int) -> None:
    paint = (235, 235, 225) if rng.random() < 0.7 else (235, 200, 50)
    vx = size * rng.uniform(0.2, 0.8)
    for foot in (rng.uniform(-0.6, 0.1) * size, rng.uniform(0.9, 1.6) * size):
        d.polygon([(vx, horizon), (foot - 6, size), (foot + 6, size)], fill=paint)
    for i in range(6):  # dashed centre line, thicker near the camera
        t0, t1 = (i + 0.2) / 6, (i + 0.6) / 6
        y0, y1 = horizon + (size - horizon) * t0**1.5, horizon + (size - horizon) * t1**1.5
        w0, w1 = 1 + 6 * t0, 1 + 6 * t1
        cx0 = vx + (size * 0.5 - vx) * t0**1.5
        cx1 = vx + (size * 0.5 - vx) * t1**1.5
        d.polygon([(cx0 - w0, y0), (cx0 + w0, y0), (cx1 + w1, y1), (cx1 - w1, y1)], fill=paint)


def _bays(rng: np.random.Generator, d: ImageDraw.ImageDraw, size: int, horizon: int) -> None:
    step = size * rng.uniform(0.18, 0.3)
    slant = rng.uniform(-0.5, 0.5) * size
    x = -rng.uniform(0, step)
    while x < size + abs(slant):
        d.line([(x, horizon + 4), (x + slant, size)], fill=(240, 240, 235), width=4)
        x += step
    d.rectangle([0, horizon, size, horizon + 4], fill=(110, 110, 110))


def _tufts(
    rng: np.random.Generator, d: ImageDraw.ImageDraw, size: int, horizon: int, ground: Colour
) -> None:
    for _ in range(120):
        x, y = rng.uniform(0, size), rng.uniform(horizon, size)
        h = 2 + 8 * (y - horizon) / size
        d.line([(x, y), (x + rng.uniform(-2, 2), y - h)], fill=_shade(ground, 0.6), width=2)


def _tiles(d: ImageDraw.ImageDraw, size: int, horizon: int, colour: Colour) -> None:
    y, step = float(horizon), 6.0
    while y < size:
        d.line([(0, y), (size, y)], fill=colour, width=1)
        y += step
        step *= 1.25


def make_camera(rng: np.random.Generator, view: str, canvas: int) -> Camera:
    """Sample one camera (see the module docstring for what varies)."""
    scene = _pick(rng, SCENES)
    background, ground = make_background(rng, canvas, scene)
    cast = rng.uniform(0.85, 1.15, 3)
    cast = cast / cast.mean()
    return Camera(
        view=view,
        yaw=float(rng.uniform(-0.4, 0.4)),
        height=float(rng.uniform(0.35, 0.8)),
        fill=float(rng.uniform(0.86, 1.0)),
        dx=float(rng.uniform(-0.05, 0.05)),
        dy=float(rng.uniform(-0.04, 0.06)),
        background=background,
        ground=ground,
        brightness=float(rng.uniform(0.6, 1.3)),
        contrast=float(rng.uniform(0.65, 1.2)),
        gamma=float(rng.uniform(0.8, 1.25)),
        cast=(float(cast[0]), float(cast[1]), float(cast[2])),
        blur=float(rng.uniform(0.0, 0.9)),
        noise=float(rng.uniform(1.0, 9.0)),
    )


def camera_views(rng: np.random.Generator, n: int) -> list[str]:
    """Front or rear per camera, with at least one of each."""
    views = ["front", "rear"] + [_pick(rng, ("front", "rear")) for _ in range(n - 2)]
    order = rng.permutation(n)
    return [views[int(i)] for i in order]


# ---------------------------------------------------------------------------- projection


class Projection:
    """Pinhole projection of vehicle coordinates to canvas pixels.

    Vehicle frame: ``x`` across (width 1, centred), ``y`` up from the ground,
    ``z`` back from the visible face (front or rear). The vehicle is turned by
    ``yaw`` about the vertical axis, so one side recedes towards the horizon.
    """

    def __init__(self, yaw: float, height: float) -> None:
        self.cos, self.sin = math.cos(yaw), math.sin(yaw)
        self.height = height
        self.scale, self.cx, self.gy = 1.0, 0.0, 0.0

    def unit(self, x: float, y: float, z: float) -> Point:
        f = CAMERA_DISTANCE / (CAMERA_DISTANCE - x * self.sin + z * self.cos)
        return (x * self.cos + z * self.sin) * f, -self.height - (y - self.height) * f

    def __call__(self, x: float, y: float, z: float) -> Point:
        u, v = self.unit(x, y, z)
        return self.cx + self.scale * u, self.gy + self.scale * v

    def fit(self, corners: Sequence[P3], canvas: int, fill: float, dx: float, dy: float) -> None:
        """Scale and place so the projected ``corners`` span ``fill`` of the canvas."""
        us, vs = zip(*(self.unit(*p) for p in corners), strict=True)
        self.scale = min(fill * canvas / (max(us) - min(us)), 0.94 * canvas / (max(vs) - min(vs)))
        self.cx = canvas / 2 - self.scale * (max(us) + min(us)) / 2 + dx * canvas
        self.gy = canvas / 2 - self.scale * (max(vs) + min(vs)) / 2 + dy * canvas


_UNIT_CIRCLE = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 24, endpoint=False)]


class Painter:
    """Draws flat primitives lying on vehicle planes through a :class:`Projection`.

    ``rect``/``ellipse``/``chord`` lie in a plane of constant depth ``z``;
    ``side_*`` lie in the side plane of constant ``x`` and take ``(z, y)``.
    """

    def __init__(self, img: Image.Image, proj: Projection) -> None:
        self.img = img
        self.d = ImageDraw.Draw(img)
        self.p = proj
        self.plate_box: list[float] | None = None
        """Canvas pixels (x0, y0, x1, y1) of the pasted plate, recorded by ``_plate``."""

    def poly(self, pts: Sequence[P3], fill: Colour) -> None:
        self.d.polygon([self.p(*q) for q in pts], fill=fill)

    def line(self, pts: Sequence[P3], fill: Colour, width: float) -> None:
        self.d.line([self.p(*q) for q in pts], fill=fill, width=max(1, round(width * self.p.scale)))

    def rect(self, x0: float, y0: float, x1: float, y1: float, z: float, fill: Colour) -> None:
        self.poly([(x0, y0, z), (x1, y0, z), (x1, y1, z), (x0, y1, z)], fill)

    def bbox(self, x0: float, y0: float, x1: float, y1: float, z: float) -> list[float]:
        (a, b), (c, e) = self.p(x0, y0, z), self.p(x1, y1, z)
        return [min(a, c), min(b, e), max(a, c) + 0.01, max(b, e) + 0.01]

    def ellipse(self, x0: float, y0: float, x1: float, y1: float, z: float, fill: Colour) -> None:
        self.d.ellipse(self.bbox(x0, y0, x1, y1, z), fill=fill)

    def chord(
        self, box: tuple[float, float, float, float, float], arc: Point, fill: Colour
    ) -> None:
        self.d.chord(self.bbox(*box), arc[0], arc[1], fill=fill)

    def side_poly(self, x: float, zy: Sequence[Point], fill: Colour) -> None:
        self.poly([(x, y, z) for z, y in zy], fill)

    def side_rect(self, x: float, z0: float, z1: float, y0: float, y1: float, fill: Colour) -> None:
        self.side_poly(x, [(z0, y0), (z1, y0), (z1, y1), (z0, y1)], fill)

    def side_circle(self, x: float, zc: float, yc: float, r: float, fill: Colour) -> None:
        """A disc in the side plane (a wheel) as a projected 24-gon."""
        self.side_poly(x, [(zc + r * c, yc + r * s) for c, s in _UNIT_CIRCLE], fill)


class Local:
    """A small drawing frame (a head): ``(u, v)`` in half-widths/heights from its centre.

    Colours are mixed a little with the glass colour, since the occupant is
    seen through the windscreen.
    """

    def __init__(self, pt: Painter, centre: P3, half: Point, glass: Colour) -> None:
        self.pt, self.centre, self.half, self.glass = pt, centre, half, glass

    def at(self, u: float, v: float) -> P3:
        x, y, z = self.centre
        return (x + u * self.half[0], y + v * self.half[1], z)

    def tint(self, c: Colour) -> Colour:
        return _mix(c, self.glass, 0.12)

    def _box(self, u: float, v: float, ru: float, rv: float) -> tuple[float, ...]:
        (x0, y0, z), (x1, y1, _) = self.at(u - ru, v - rv), self.at(u + ru, v + rv)
        return (x0, y0, x1, y1, z)

    def ellipse(self, u: float, v: float, ru: float, rv: float, c: Colour) -> None:
        x0, y0, x1, y1, z = self._box(u, v, ru, rv)
        self.pt.ellipse(x0, y0, x1, y1, z, self.tint(c))

    def rect(self, u0: float, v0: float, u1: float, v1: float, c: Colour) -> None:
        (x0, y0, z), (x1, y1, _) = self.at(u0, v0), self.at(u1, v1)
        self.pt.rect(x0, y0, x1, y1, z, self.tint(c))

    def half_ellipse(self, u: float, v: float, ru: float, rv: float, top: bool, c: Colour) -> None:
        x0, y0, x1, y1, z = self._box(u, v, ru, rv)
        self.pt.chord((x0, y0, x1, y1, z), (180, 360) if top else (0, 180), self.tint(c))

    def poly(self, uv: Sequence[Point], c: Colour) -> None:
        self.pt.poly([self.at(u, v) for u, v in uv], self.tint(c))

    def outline(self, uv: Sequence[Point], c: Colour, width: float) -> None:
        self.pt.line([self.at(u, v) for u, v in uv], self.tint(c), width)


# ------------------------------------------------------------------------------ drawing

GLASS: Colour = (44, 54, 66)
TYRE: Colour = (22, 22, 24)
DARK: Colour = (32, 32, 36)
CHROME: Colour = (150, 150, 156)
LAMP: Colour = (238, 236, 210)
RED: Colour = (200, 28, 30)
AMBER: Colour = (235, 140, 30)
PLATE_WIDTH = 0.5
"""Plate width in vehicle widths: larger than real plates so the text stays legible."""
PLATE_Y = 0.035
"""Plate bottom above the body's lower edge."""


@dataclass(frozen=True)
class Layout:
    """Depths along the vehicle as seen from the visible face (front or rear view)."""

    near: float  # depth of the visible window's base
    near_slant: float  # depth taken by that window
    far: float
    far_slant: float

    @staticmethod
    def of(shape: Shape, view: str) -> Layout:
        if view == "front":
            return Layout(shape.hood, shape.slant_f, shape.trunk, shape.slant_r)
        return Layout(shape.trunk, shape.slant_r, shape.hood, shape.slant_f)


@dataclass(frozen=True)
class Scene:
    """What one drawing call needs besides the painter."""

    v: Vehicle
    view: str
    lay: Layout
    plate: Image.Image

    @property
    def s(self) -> Shape:
        return self.v.shape

    @property
    def plate_top(self) -> float:
        return self.s.clearance + PLATE_Y + PLATE_WIDTH * self.plate.height / self.plate.width

    def cabin_point(self, t: float, u: float) -> P3:
        """Point on the visible cabin face: ``t`` 0 belt .. 1 roof, ``u`` -1 .. 1 across."""
        s, lay = self.s, self.lay
        half = (s.cab_bot + (s.cab_top - s.cab_bot) * t) / 2
        return (u * half, s.belt + s.cabin_h * t, lay.near + lay.near_slant * t)

    def cabin_quad(self, t0: float, t1: float, u0: float, u1: float) -> list[P3]:
        return [self.cabin_point(t, u) for t, u in ((t0, u0), (t0, u1), (t1, u1), (t1, u0))]


def draw_vehicle(pt: Painter, v: Vehicle, view: str, plate_img: Image.Image) -> None:
    """Painter's order: far parts first, then the cabin with its occupant, then the near face."""
    sc = Scene(v, view, Layout.of(v.shape, view), plate_img)
    s = v.shape
    side = 1.0 if pt.p.sin >= 0 else -1.0
    if s.kind == "truck":
        if view == "front":
            _truck_box_front(pt, sc)
        _truck_side(pt, sc, side)
    else:
        _car_side(pt, sc, side)
    for sx in (-1.0, 1.0):  # tyres seen under the bumper
        pt.rect(sx * 0.29, 0.0, sx * 0.46, s.clearance + 0.06, 0.3, TYRE)
    if s.kind == "truck" and view == "rear":
        _truck_box_rear(pt, sc)
        return
    _cabin(pt, sc)
    _mirrors(pt, sc)
    _hood_top(pt, sc)
    _lower_face(pt, sc)
    if view == "front":
        _front_face(pt, sc)
    else:
        _rear_face(pt, sc)
    _plate(pt, sc, s.clearance + PLATE_Y)
    _roof_items(pt, sc)


def _car_side(pt: Painter, sc: Scene, side: float) -> None:
    """The side a yawed camera sees: panel, windows, pillar, stripe, rail, wheels."""
    v, s, lay = sc.v, sc.s, sc.lay
    L, x = s.length, side * 0.5
    y0, y1 = s.clearance, s.belt
    dark = _shade(v.paint, 0.72)
    corners = [(0.0, y0 + 0.03), (0.0, y1 - 0.02), (0.05, y1), (L - 0.05, y1)]
    pt.side_poly(x, corners + [(L, y1 - 0.02), (L, y0 + 0.03), (L - 0.05, y0), (0.05, y0)], dark)
    xc = side * (s.cab_bot + s.cab_top) / 4
    za, zb = lay.near, lay.near + lay.near_slant
    zc, zd = L - lay.far - lay.far_slant, L - lay.far
    cabin = _shade(v.accent, 0.72) if v.stripes == "twotone" else dark
    pt.side_poly(xc, [(za, y1), (zb, s.top), (zc, s.top), (zd, y1)], cabin)
    ga, gb, gc, gd = za + 0.06, zb + 0.02, zc - 0.02, zd - 0.06
    if s.kind == "van":  # a panel van has side windows only next to the driver
        if sc.view == "front":
            gc = gd = ga + 0.75
        else:
            ga = gb = gd - 0.75
    t0, t1 = y1 + 0.03, s.top - 0.035
    pt.side_poly(xc, [(ga, t0), (gb, t1), (gc, t1), (gd, t0)], _shade(GLASS, 0.85))
    pillar = (za + zd) / 2
    pt.side_rect(xc, pillar - 0.03, pillar + 0.03, t0, t1, cabin)
    for z in (za + 0.04, pillar):  # door seams
        pt.line([(x, y1 - 0.01, z), (x, y0 + 0.04, z)], _shade(v.paint, 0.5), 0.008)
    if v.stripes == "side":
        ym = y0 + 0.55 * (y1 - y0)
        pt.side_rect(x, 0.02, L - 0.02, ym, ym + 0.05, v.accent)
    if v.roof == "rack":
        pt.side_rect(side * s.cab_top / 2, zb, zc, s.top, s.top + 0.05, (60, 60, 64))
    r = s.wheel_r
    for z in (max(r + 0.14, 0.17 * L), L - max(r + 0.16, 0.2 * L)):
        _wheel(pt, v, x, z, r)


def _truck_side(pt: Painter, sc: Scene, side: float) -> None:
    """Chassis, cargo box with a livery band, cab with its door window, wheels."""
    v, s = sc.v, sc.s
    L, x, front = s.length, side * 0.5, sc.view == "front"
    b0, b1 = (TRUCK_CAB + 0.08, L) if front else (0.0, L - TRUCK_CAB - 0.08)
    c0, c1 = (0.0, TRUCK_CAB) if front else (L - TRUCK_CAB, L)
    pt.side_rect(x, 0.0, L, s.clearance, s.clearance + 0.1, DARK)
    box_bottom = s.clearance + 0.08
    pt.side_rect(side * 0.52, b0, b1, box_bottom, s.box_h, _shade(_truck_box_colour(v), 0.8))
    band = box_bottom + (s.box_h - box_bottom) * 0.45
    pt.side_rect(side * 0.52, b0, b1, band, band + 0.12, _shade(v.accent, 0.8))
    dark = _shade(v.paint, 0.72)
    pt.side_rect(x, c0, c1, s.clearance, s.belt, dark)
    lean = s.slant_f if front else -s.slant_f  # the windscreen leans back
    nose, tail = (c0, c1) if front else (c1, c0)
    pt.side_poly(x, [(nose, s.belt), (nose + lean, s.top), (tail, s.top), (tail, s.belt)], dark)
    mid = (c0 + c1) / 2
    step = 0.06 if front else -0.06
    window = [(nose + step, s.belt + 0.03), (nose + lean + step, s.top - 0.04)]
    pt.side_poly(x, window + [(mid, s.top - 0.04), (mid, s.belt + 0.03)], _shade(GLASS, 0.85))
    for z in (0.45, L - 0.55) if front else (0.55, L - 0.45):
        _wheel(pt, v, x, z, s.wheel_r)


def _wheel(pt: Painter, v: Vehicle, x: float, zc: float, r: float) -> None:
    pt.side_circle(x, zc, r, r * 1.18, (30, 30, 32))  # wheel arch
    pt.side_circle(x, zc, r, r, TYRE)
    pt.side_circle(x, zc, r, r * 0.62, v.rim)
    spoke = _shade(v.rim, 0.45) if sum(v.rim) > 200 else (150, 150, 155)
    if v.rim_style == "spokes":
        for a in np.linspace(0.0, 2 * math.pi, v.spokes, endpoint=False):
            tip = (x, r + 0.58 * r * math.sin(a), zc + 0.58 * r * math.cos(a))
            pt.line([(x, r, zc), tip], spoke, 0.012)
    elif v.rim_style == "star":
        angles = np.linspace(0.0, 2 * math.pi, 2 * v.spokes, endpoint=False)
        radii = [(0.55 if k % 2 == 0 else 0.2) * r for k in range(2 * v.spokes)]
        star = [
            (zc + q * math.cos(a), r + q * math.sin(a)) for a, q in zip(angles, radii, strict=True)
        ]
        pt.side_poly(x, star, spoke)
    elif v.rim_style == "dish":
        pt.side_circle(x, zc, r, r * 0.45, spoke)
        pt.side_circle(x, zc, r, r * 0.3, v.rim)
    pt.side_circle(x, zc, r, r * 0.14, _shade(spoke, 0.7))


def _truck_box_colour(v: Vehicle) -> Colour:
    return (236, 236, 232) if sum(v.paint) < 300 else _shade(v.paint, 0.65)


def _truck_box_front(pt: Painter, sc: Scene) -> None:
    s, z = sc.s, TRUCK_CAB + 0.08
    pt.rect(-0.52, s.belt, 0.52, s.box_h, z, _truck_box_colour(sc.v))
    pt.rect(-0.52, s.box_h - 0.05, 0.52, s.box_h, z, _shade(sc.v.accent, 0.9))


def _truck_box_rear(pt: Painter, sc: Scene) -> None:
    """Rear doors of the cargo box: seam, ribs, handles, lights on the bumper bar."""
    s, v = sc.s, sc.v
    box = _truck_box_colour(v)
    y0 = s.clearance + 0.08
    pt.rect(-0.5, s.clearance - 0.02, 0.5, y0 + 0.02, 0.0, DARK)
    pt.rect(-0.52, y0, 0.52, s.box_h, 0.0, box)
    pt.line([(0.0, y0, 0.0), (0.0, s.box_h, 0.0)], _shade(box, 0.6), 0.012)
    for y in np.linspace(y0 + 0.15, s.box_h - 0.1, 4):
        pt.line([(-0.5, float(y), 0.0), (0.5, float(y), 0.0)], _shade(box, 0.85), 0.006)
    for sx in (-1.0, 1.0):
        pt.rect(sx * 0.05, y0 + 0.25, sx * 0.075, y0 + 0.65, 0.0, (70, 70, 75))
        pt.rect(sx * 0.4, s.clearance, sx * 0.5, s.clearance + 0.06, 0.0, RED)
    pt.rect(-0.52, s.box_h - 0.06, 0.52, s.box_h, 0.0, _shade(v.accent, 0.9))
    _plate(pt, sc, y0 + 0.04)


def _cabin(pt: Painter, sc: Scene) -> None:
    """Cabin face: glass, the occupant behind it, then the frame drawn over the edges."""
    v, s = sc.v, sc.s
    frame = v.accent if v.stripes == "twotone" else v.paint
    pt.poly(sc.cabin_quad(0.0, 1.0, -1.0, 1.0), frame)
    glass = _shade(GLASS, v.glass_shade)
    if s.kind == "van" and sc.view == "rear":  # rear doors of a panel van: two windows
        for u0, u1 in ((-0.86, -0.06), (0.06, 0.86)):
            pt.poly(sc.cabin_quad(0.3, 0.85, u0, u1), glass)
        pt.line([sc.cabin_point(0.0, 0.0), sc.cabin_point(1.0, 0.0)], _shade(v.paint, 0.5), 0.01)
        return
    g0, g1, gu = 0.05, 0.88, 0.9
    pt.poly(sc.cabin_quad(g0, g1, -gu, gu), glass)
    pt.poly(sc.cabin_quad(g0, g1, 0.25, 0.42), _mix(glass, (170, 180, 190), 0.18))  # reflection
    _occupant(pt, sc, glass, (g0, g1))
    pt.poly(sc.cabin_quad(0.0, g0 + 0.05, -1.0, 1.0), _shade(frame, 0.55))  # dashboard
    pt.poly(sc.cabin_quad(g1, 1.0, -1.0, 1.0), frame)  # roof band
    pt.poly(sc.cabin_quad(0.0, 1.0, -1.0, -gu), frame)  # pillars
    pt.poly(sc.cabin_quad(0.0, 1.0, gu, 1.0), frame)
    if v.stripes == "twin":
        for a, b in TWIN_STRIPES:
            pt.poly(sc.cabin_quad(g1, 1.0, a / 0.35, b / 0.35), v.accent)


TWIN_STRIPES = ((-0.14, -0.05), (0.05, 0.14))


def _occupant(pt: Painter, sc: Scene, glass: Colour, rows: Point) -> None:
    """The driver behind the glass: face from the front, back of the head from the rear."""
    s, dr = sc.s, sc.v.driver
    front = sc.view == "front"
    x = sc.v.driver_x if front else -sc.v.driver_x  # seen from behind, sides swap
    yb, yt = s.belt + s.cabin_h * rows[0], s.belt + s.cabin_h * rows[1]
    hh = min(0.105, 0.33 * (yt - yb))
    z = sc.lay.near + sc.lay.near_slant * 0.5
    head = Local(pt, (x, yb + (yt - yb) * 0.56, z), (hh * 0.78, hh), glass)
    if not front:  # the passenger's headrest
        Local(pt, (-x, head.centre[1], z), head.half, glass).ellipse(
            0, -0.4, 0.9, 0.8, (70, 70, 74)
        )
    # shoulders, cut flat at the glass bottom (the dashboard band hides the cut)
    floor = (yb - head.centre[1]) / hh
    arc = np.linspace(0.0, math.pi, 17)
    head.poly(
        [(2.3 * math.cos(a), max(floor, -0.8 - 1.2 * (1 - math.sin(a)))) for a in arc], dr.shirt
    )
    if dr.hair_style == "long":
        head.ellipse(0, -0.19, 1.3, 1.31, dr.hair)
    head.rect(-0.35, -1.1, 0.35, -0.5, _shade(dr.skin, 0.85))  # neck
    if front:
        head.ellipse(0, 0, 1, 1, dr.skin)
        _hair(head, dr)
        _face(head, dr)
    else:
        head.ellipse(0, 0, 1, 1, dr.skin if dr.hair_style == "bald" else dr.hair)
        if dr.hair_style == "cap":
            head.half_ellipse(0, 0.46, 1.05, 0.66, True, dr.cap)


def _hair(head: Local, dr: Driver) -> None:
    if dr.hair_style in ("short", "long"):
        head.half_ellipse(0, 0.5, 1.06, 0.6, True, dr.hair)
        if dr.hair_style == "long":
            for sx in (-1.0, 1.0):
                head.rect(sx * 1.06, -0.9, sx * 0.8, 0.4, dr.hair)
    elif dr.hair_style == "curly":
        for a in np.linspace(0.0, math.pi, 7):
            head.ellipse(0.95 * math.cos(a), 0.55 + 0.45 * math.sin(a), 0.32, 0.28, dr.hair)
    elif dr.hair_style == "cap":
        head.half_ellipse(0, 0.62, 1.08, 0.58, True, dr.cap)
        head.rect(-1.1, 0.42, 1.1, 0.56, _shade(dr.cap, 0.7))  # brim
    else:  # bald: a fringe above the ears
        for sx in (-1.0, 1.0):
            head.rect(sx * 0.98, -0.05, sx * 0.78, 0.35, dr.hair)


def _face(head: Local, dr: Driver) -> None:
    """Eyes (white, iris, pupil), brows, glasses, nose, then a beard or a mouth."""
    ink: Colour = (25, 20, 20)
    for sx in (-1.0, 1.0):
        ex = sx * 0.4
        head.ellipse(ex, 0.12, 0.24, 0.13, (245, 245, 240))
        head.ellipse(ex, 0.12, 0.12, 0.11, dr.eyes)
        head.ellipse(ex, 0.12, 0.05, 0.05, ink)
        if dr.hair_style != "cap":
            head.rect(ex - 0.25, 0.34, ex + 0.25, 0.42, _shade(dr.hair, 0.8))
        if dr.glasses:
            frame = [(ex - 0.3, 0.3), (ex + 0.3, 0.3), (ex + 0.3, -0.06), (ex - 0.3, -0.06)]
            head.outline(frame + frame[:1], ink, 0.006)
    head.rect(-0.07, -0.25, 0.07, 0.02, _shade(dr.skin, 0.8))
    if dr.beard:
        head.half_ellipse(0, -0.45, 1.0, 0.55, False, dr.hair)
        head.rect(-0.3, -0.5, 0.3, -0.38, _shade(dr.skin, 0.7))
    else:
        head.rect(-0.32, -0.52, 0.32, -0.4, (150, 55, 55))


def _mirrors(pt: Painter, sc: Scene) -> None:
    s = sc.s
    big = 0.05 if s.kind in ("van", "truck") else 0.0
    for sx in (-1.0, 1.0):
        x0, x1 = sx * s.cab_bot / 2, sx * (s.cab_bot / 2 + 0.1)
        pt.rect(x0, s.belt + 0.02, x1, s.belt + 0.09 + big, sc.lay.near + 0.05, sc.v.mirrors)


def _hood_top(pt: Painter, sc: Scene) -> None:
    """Hood (front) or trunk lid (rear); hidden by the face unless the camera is higher."""
    s, b, near = sc.s, sc.s.belt, sc.lay.near
    half = s.cab_bot / 2
    pt.poly(
        [(-0.5, b, 0.0), (0.5, b, 0.0), (half, b, near), (-half, b, near)], _shade(sc.v.paint, 1.1)
    )
    if sc.v.stripes == "twin":
        for a, c in TWIN_STRIPES:
            pt.poly([(a, b, 0.0), (c, b, 0.0), (c, b, near), (a, b, near)], sc.v.accent)


def _lower_face(pt: Painter, sc: Scene) -> None:
    """Body below the belt line with its stripes and the bumper."""
    v, y0, y1 = sc.v, sc.s.clearance, sc.s.belt
    outline = [(-0.5, y0 + 0.03), (-0.5, y1 - 0.04), (-0.47, y1), (0.47, y1)]
    outline += [(0.5, y1 - 0.04), (0.5, y0 + 0.03), (0.47, y0), (-0.47, y0)]
    pt.poly([(x, y, 0.0) for x, y in outline], v.paint)
    if v.stripes == "twin":
        for a, b in TWIN_STRIPES:
            pt.rect(a, y0, b, y1, 0.0, v.accent)
    elif v.stripes == "lower":
        pt.rect(-0.5, y0 + 0.02, 0.5, y0 + 0.4 * (y1 - y0), 0.0, v.accent)
    elif v.stripes == "side":
        pt.rect(-0.5, y1 - 0.05, 0.5, y1 - 0.03, 0.0, v.accent)
    pt.rect(-0.49, y0, 0.49, y0 + 0.24 * (y1 - y0), 0.0, v.trim)


def _plate(pt: Painter, sc: Scene, y0: float) -> None:
    """Plate frame, then the plate image pasted into its projected box."""
    w = PLATE_WIDTH
    h = w * sc.plate.height / sc.plate.width
    pt.rect(-w / 2 - 0.012, y0 - 0.012, w / 2 + 0.012, y0 + h + 0.012, 0.0, (20, 20, 22))
    box = pt.bbox(-w / 2, y0, w / 2, y0 + h, 0.0)
    size = (max(1, round(box[2] - box[0])), max(1, round(box[3] - box[1])))
    pt.img.paste(sc.plate.resize(size, Image.Resampling.BILINEAR), (round(box[0]), round(box[1])))
    left, top = round(box[0]), round(box[1])
    pt.plate_box = [left, top, left + size[0], top + size[1]]


def _front_face(pt: Painter, sc: Scene) -> None:
    """Grille (with badge), headlights and fog lights between plate and belt line."""
    v, s = sc.v, sc.s
    gy0, gy1 = sc.plate_top + 0.02, s.belt - 0.03
    gw = {"suv": 0.26, "truck": 0.3, "van": 0.2}.get(s.kind, 0.21)
    pt.rect(-gw - 0.01, gy0 - 0.01, gw + 0.01, gy1 + 0.005, 0.0, v.trim)
    pt.rect(-gw, gy0, gw, gy1, 0.0, DARK)
    if v.grille == "bars":
        for y in np.linspace(gy0 + 0.015, gy1 - 0.015, 4):
            pt.rect(-gw, float(y) - 0.006, gw, float(y) + 0.006, 0.0, CHROME)
    elif v.grille == "vertical":
        for x in np.linspace(-gw + 0.03, gw - 0.03, 7):
            pt.rect(float(x) - 0.006, gy0, float(x) + 0.006, gy1, 0.0, CHROME)
    elif v.grille == "mesh":
        for x in np.linspace(-gw + 0.02, gw - 0.02, 9):
            pt.line([(float(x), gy0, 0.0), (float(x), gy1, 0.0)], (80, 80, 86), 0.004)
        for y in np.linspace(gy0 + 0.01, gy1 - 0.01, 4):
            pt.line([(-gw, float(y), 0.0), (gw, float(y), 0.0)], (80, 80, 86), 0.004)
    else:  # slot: a body-coloured panel with a thin intake
        pt.rect(-gw, gy0, gw, gy1, 0.0, _shade(v.paint, 0.95))
        pt.rect(-gw * 0.8, gy0 + 0.01, gw * 0.8, gy0 + 0.03, 0.0, DARK)
    ym = (gy0 + gy1) / 2
    pt.ellipse(-0.025, ym - 0.02, 0.025, ym + 0.02, 0.0, CHROME)
    ly0 = max(gy0, s.belt - 0.11)
    for sx in (-1.0, 1.0):
        _headlight(pt, v.headlights, sx, ly0, gy1)
        if v.fog:
            pt.ellipse(sx * 0.36, s.clearance + 0.03, sx * 0.42, s.clearance + 0.06, 0.0, LAMP)


def _headlight(pt: Painter, style: str, sx: float, y0: float, y1: float) -> None:
    x0, x1 = sx * 0.29, sx * 0.47
    rim: Colour = (60, 60, 64)
    if style == "round":
        r, xc = (y1 - y0) / 2, sx * 0.39
        pt.ellipse(xc - r - 0.01, y0 - 0.01, xc + r + 0.01, y1 + 0.01, 0.0, rim)
        pt.ellipse(xc - r, y0, xc + r, y1, 0.0, LAMP)
    elif style == "twin":
        r, ym = (y1 - y0) / 2.4, (y0 + y1) / 2
        for xc in (sx * 0.33, sx * 0.43):
            pt.ellipse(xc - r, ym - r, xc + r, ym + r, 0.0, LAMP)
    elif style == "slit":
        pt.poly(
            [(x0, y1 - 0.01, 0.0), (x1, y1, 0.0), (x1, y1 - 0.035, 0.0), (x0, y1 - 0.03, 0.0)], LAMP
        )
        pt.rect(x1 - sx * 0.03, y1 - 0.035, x1, y0 + 0.01, 0.0, AMBER)
    else:  # rect, with an amber indicator outboard
        pt.rect(x0 - sx * 0.01, y0 - 0.01, x1 + sx * 0.005, y1 + 0.01, 0.0, rim)
        pt.rect(x0, y0, x1 - sx * 0.05, y1, 0.0, LAMP)
        pt.rect(x1 - sx * 0.045, y0, x1, y1, 0.0, AMBER)


def _rear_face(pt: Painter, sc: Scene) -> None:
    """Tail lights, exhaust, spare wheel (SUVs) and spoiler."""
    v, s = sc.v, sc.s
    y0, y1 = s.clearance, s.belt
    for sx in (-1.0, 1.0):
        if v.taillights == "bar":
            pt.rect(sx * 0.27, y1 - 0.1, sx * 0.48, y1 - 0.03, 0.0, RED)
            pt.rect(sx * 0.27, y1 - 0.1, sx * 0.32, y1 - 0.03, 0.0, AMBER)
        elif v.taillights == "vertical":
            top = s.top - 0.06 if s.kind == "van" else y1 - 0.02
            pt.rect(sx * 0.41, y0 + 0.1, sx * 0.48, top, 0.0, RED)
        else:
            for xc in (sx * 0.34, sx * 0.43):
                pt.ellipse(xc - 0.035, y1 - 0.105, xc + 0.035, y1 - 0.035, 0.0, RED)
    ex = 0.25 if v.driver_x > 0 else -0.25
    pt.ellipse(ex - 0.03, y0 - 0.015, ex + 0.03, y0 + 0.02, 0.0, (15, 15, 15))
    if v.spare:
        r = min(0.11, (y1 - sc.plate_top) / 2 - 0.01)
        yc = sc.plate_top + 0.01 + r
        pt.ellipse(-r, yc - r, r, yc + r, -0.04, TYRE)
        pt.ellipse(-r * 0.7, yc - r * 0.7, r * 0.7, yc + r * 0.7, -0.04, v.accent)
    if v.spoiler:
        hatch = s.kind == "hatchback"
        ys = s.top + 0.005 if hatch else y1 + 0.015
        zs = (sc.lay.near + sc.lay.near_slant) if hatch else sc.lay.near * 0.5
        pt.rect(-0.42, ys, 0.42, ys + 0.03, zs, _shade(v.trim, 1.2))


def _roof_items(pt: Painter, sc: Scene) -> None:
    s, v = sc.s, sc.v
    z = sc.lay.near + sc.lay.near_slant + 0.15
    if v.roof == "rack":
        half = s.cab_top / 2
        for sx in (-1.0, 1.0):
            pt.rect(sx * half * 0.85, s.top, sx * half * 0.95, s.top + 0.04, z, (50, 50, 54))
        pt.rect(-half - 0.02, s.top + 0.03, half + 0.02, s.top + 0.055, z, (70, 70, 74))
    elif v.roof == "sign":
        pt.rect(-0.13, s.top, 0.13, s.top + 0.08, z + 0.1, (240, 200, 40))
        pt.rect(-0.1, s.top + 0.025, 0.1, s.top + 0.05, z + 0.1, (30, 30, 30))


# ------------------------------------------------------------------------------- plates


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's built-in bitmap font (no font file needed, identical everywhere)."""
    loader = getattr(ImageFont, "load_default_imagefont", None)
    return loader() if loader is not None else ImageFont.load_default()


def plate_image(text: str, bg: Colour) -> Image.Image:
    """The plate at the font's native resolution, cropped to the ink plus a margin.

    It is scaled up into the plate's box on the supersampled canvas and only
    then downsampled with the whole image, so glyphs keep their shape.
    """
    mask = Image.new("L", (8 * len(text) + 16, 24), 0)
    ImageDraw.Draw(mask).text((4, 4), text, fill=255, font=_font())
    ink = mask.getbbox() or (0, 0, mask.width, mask.height)
    mask = mask.crop((ink[0] - 2, ink[1] - 2, ink[2] + 2, ink[3] + 2))
    img = Image.new("RGB", mask.size, bg)
    img.paste((18, 18, 20), (0, 0), mask)
    return img


# ------------------------------------------------------------------------------- images


def canvas_size(image_size: int) -> int:
    """Supersampled canvas: an integer multiple of the output, at least MIN_CANVAS."""
    return image_size * max(2, math.ceil(MIN_CANVAS / image_size))


def _corners(s: Shape) -> list[P3]:
    top = max(s.top + (0.06 if s.kind != "truck" else 0.0), s.box_h)
    return [(x, y, z) for x in (-0.56, 0.56) for y in (0.0, top) for z in (0.0, s.length)]


def render(
    v: Vehicle, cam: Camera, plate_img: Image.Image, rng: np.random.Generator, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """One ``size x size x 3`` uint8 image of ``v`` seen by ``cam``, and its plate box.

    The box is the pasted plate's (x0, y0, x1, y1) as fractions of the image
    width/height, clipped to the image (all zeros if the plate is off-image);
    an occluder may still cover it, as in real footage.
    """
    canvas = cam.background.width
    proj = Projection(cam.yaw + rng.normal(0, 0.05), cam.height + rng.normal(0, 0.04))
    proj.fit(
        _corners(v.shape),
        canvas,
        cam.fill * rng.uniform(0.95, 1.04),
        cam.dx + rng.normal(0, 0.015),
        cam.dy + rng.normal(0, 0.015),
    )
    img = cam.background.copy()
    pt = Painter(img, proj)
    z1 = v.shape.length + 0.04
    shadow = [(-0.58, 0.0, -0.04), (0.58, 0.0, -0.04), (0.58, 0.0, z1), (-0.58, 0.0, z1)]
    pt.poly(shadow, _shade(cam.ground, 0.45))
    draw_vehicle(pt, v, cam.view, plate_img)
    if rng.random() < OCCLUSION_RATE:
        _occluder(pt.d, rng, canvas)
    small = img.reduce(canvas // size)  # box filter: plain supersampling
    blur = cam.blur * rng.uniform(0.7, 1.3)
    if blur > 0.15:
        small = small.filter(ImageFilter.GaussianBlur(blur))
    box = np.zeros(4, dtype=np.float32)
    if pt.plate_box is not None:
        box = np.clip(np.asarray(pt.plate_box, dtype=np.float32) / canvas, 0.0, 1.0)
    return _light(np.asarray(small, dtype=np.float32) / 255.0, cam, rng), box


def _occluder(d: ImageDraw.ImageDraw, rng: np.random.Generator, canvas: int) -> None:
    """A lamp post or sign pole between camera and vehicle, as in real traffic footage."""
    x = canvas * rng.uniform(0.05, 0.95)
    w = canvas * rng.uniform(0.025, 0.06)
    grey = _hsv(0.0, 0.0, rng.uniform(0.25, 0.7))
    d.rectangle([x - w / 2, 0, x + w / 2, canvas], fill=grey)
    if rng.random() < 0.5:  # a sign plate on the pole
        y, r = canvas * rng.uniform(0.1, 0.4), canvas * rng.uniform(0.06, 0.1)
        colour = _pick_colour(rng, ((200, 30, 30), (30, 80, 170), (240, 200, 40)))
        d.rectangle([x - r, y - r, x + r, y + r], fill=colour)


def _light(x: np.ndarray, cam: Camera, rng: np.random.Generator) -> np.ndarray:
    """Camera response: contrast, colour cast and brightness, gamma, then noise."""
    x = (x - 0.5) * cam.contrast * rng.uniform(0.95, 1.05) + 0.5
    gain = np.asarray(cam.cast, dtype=np.float32) * cam.brightness * rng.uniform(0.92, 1.08)
    x = np.clip(x * gain, 0.0, 1.0) ** (cam.gamma * rng.uniform(0.97, 1.03))
    x = x * 255.0 + cam.noise * rng.standard_normal(x.shape, dtype=np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
