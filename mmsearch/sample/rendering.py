"""Drawing product pictures: per-category silhouettes, patterns, backdrops and camera views.

`render_product_image` paints one product from one `View`; `studio_view` is the catalog shot
and `query_view` a shopper's photo of the same product.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mmsearch.sample.products import Design, Mark, Product
from mmsearch.sample.vocabulary import PRODUCT_IMAGE_SIZE, QUERY_IMAGE_SIZES, RGB


@dataclass(frozen=True)
class View:
    """How one image of a product is shot: canvas, pose, background and sensor effects."""

    size: tuple[int, int]
    scale: float
    rotation: float  # degrees, counter-clockwise on screen
    mirror: bool
    offset: tuple[float, float]  # centre shift as a share of the short side
    background: str
    noise: float  # Gaussian sigma in 8-bit levels
    blur: float  # Gaussian blur radius in pixels, 0 for none
    jpeg_quality: int  # 0 for none; otherwise re-encode once, like a phone upload


class Prim(NamedTuple):
    """A drawing primitive in object units: a filled polygon, or a polyline when width > 0."""

    role: str  # body (patterned) | hole | accent | shade | dark | light | lens
    pts: np.ndarray
    width: float = 0.0


# --------------------------------------------------------------------------------------------
# Geometry helpers (object units: x right, y down, product inside roughly 0.1..0.9)
# --------------------------------------------------------------------------------------------


def _ellipse(
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    n: int = 32,
    a0: float = 0.0,
    a1: float = 2 * math.pi,
) -> np.ndarray:
    closed = abs(a1 - a0 - 2 * math.pi) < 1e-9
    t = np.linspace(a0, a1, n, endpoint=not closed)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _rrect(x0: float, y0: float, x1: float, y1: float, r: float) -> np.ndarray:
    r = min(r, (x1 - x0) / 2, (y1 - y0) / 2)
    corners = (
        (x1 - r, y0 + r, -0.5 * math.pi),
        (x1 - r, y1 - r, 0.0),
        (x0 + r, y1 - r, 0.5 * math.pi),
        (x0 + r, y0 + r, math.pi),
    )
    arcs = [_ellipse(cx, cy, r, r, 6, a, a + 0.5 * math.pi) for cx, cy, a in corners]
    return np.concatenate(arcs)


def _poly(*pts: tuple[float, float]) -> np.ndarray:
    return np.asarray(pts, dtype=np.float64)


def _mirror_closed(left: Sequence[tuple[float, float]]) -> np.ndarray:
    """Left half outline (top to bottom) -> symmetric closed outline around x = 0.5."""
    right = [(1.0 - x, y) for x, y in reversed(left)]
    return _poly(*left, *right)


# --------------------------------------------------------------------------------------------
# One silhouette per category. Each returns primitives and the box where a product mark may go.
# k holds four design-specific proportions in [0, 1].
# --------------------------------------------------------------------------------------------

Box = tuple[float, float, float, float]


def _shape_tshirt(k: Sequence[float]) -> tuple[list[Prim], Box]:
    bw, sl, nw, nd = 0.22 + 0.05 * k[0], 0.08 + 0.07 * k[1], 0.07 + 0.03 * k[2], 0.04 + 0.06 * k[3]
    top, hem, sw = 0.16, 0.86, bw + 0.03
    ox, oy = 0.5 - sw - sl, top + 0.03 + sl * 0.8
    left = [
        (0.5 - sw, top + 0.03),
        (ox, oy),
        (ox + 0.06, oy + 0.08),
        (0.5 - bw, top + 0.2),
        (0.5 - bw, hem),
    ]
    neck = _ellipse(0.5, top, nw, nd, 12, 0.0, math.pi)
    body = np.concatenate([_poly((0.5 - nw, top)), _mirror_closed(left), neck])
    prims = [Prim("body", body), Prim("shade", neck, 0.018)]
    if k[3] > 0.6:  # chest pocket on some designs
        prims.append(Prim("shade", _rrect(0.56, 0.36, 0.66, 0.47, 0.01)))
    return prims, (0.5 - bw + 0.04, top + 0.15, 0.5 + bw - 0.04, hem - 0.08)


def _shape_dress(k: Sequence[float]) -> tuple[list[Prim], Box]:
    top, wy = 0.12, 0.40 + 0.05 * k[0]
    bod, ww, hw = 0.11 + 0.03 * k[1], 0.08 + 0.02 * k[1], 0.22 + 0.12 * k[2]
    dip = 0.27 + 0.04 * k[3]
    hem = [(0.5 + x, 0.9 + 0.012 * math.sin(x * 60)) for x in np.linspace(hw, -hw, 9)]
    body = _poly(
        (0.5 - 0.085, top),
        (0.5 - 0.06, top),
        (0.5 - 0.03, 0.23),
        (0.5, dip),
        (0.5 + 0.03, 0.23),
        (0.5 + 0.06, top),
        (0.5 + 0.085, top),
        (0.5 + bod, 0.27),
        (0.5 + ww, wy),
        *hem,
        (0.5 - ww, wy),
        (0.5 - bod, 0.27),
    )
    belt = _poly(
        (0.5 - ww - 0.01, wy - 0.022),
        (0.5 + ww + 0.01, wy - 0.022),
        (0.5 + ww + 0.012, wy + 0.022),
        (0.5 - ww - 0.012, wy + 0.022),
    )
    return [Prim("body", body), Prim("accent", belt)], (
        0.5 - hw * 0.6,
        wy + 0.06,
        0.5 + hw * 0.6,
        0.84,
    )


def _shape_sneaker(k: Sequence[float]) -> tuple[list[Prim], Box]:
    sh, ht, tl, b = 0.045 + 0.03 * k[0], 0.36 + 0.06 * k[1], 0.84 + 0.04 * k[2], 0.70
    p1, p2 = np.array([0.46, ht - 0.01]), np.array([0.62, b - 0.19])
    upper = _poly(
        (0.14, b - sh),
        (0.13, ht + 0.06),
        (0.17, ht),
        (0.30, ht + 0.07),
        (0.40, ht - 0.04),
        (0.46, ht - 0.03),
        (0.62, b - 0.20),
        (tl - 0.08, b - sh - 0.08),
        (tl, b - sh - 0.02),
        (tl, b - sh),
    )
    prims = [Prim("body", upper), Prim("accent", _rrect(0.11, b - sh, tl + 0.02, b, sh / 2))]
    d = (p2 - p1) / np.linalg.norm(p2 - p1)
    n = np.array([-d[1], d[0]]) * 0.03
    for t in (0.15, 0.45, 0.75):  # laces across the instep
        c = p1 + t * (p2 - p1) + n * 0.6
        prims.append(Prim("light", np.stack([c - n, c + n]), 0.012))
    if k[3] > 0.4:  # side stripe
        prims.append(
            Prim(
                "accent", _poly((0.30, b - sh - 0.05), (0.45, b - sh - 0.1), (0.58, b - 0.22)), 0.02
            )
        )
    return prims, (0.2, ht + 0.1, 0.55, b - sh - 0.04)


def _shape_boot(k: Sequence[float]) -> tuple[list[Prim], Box]:
    st, toe, hh, ys = 0.12 + 0.12 * k[0], 0.80 + 0.05 * k[1], 0.04 + 0.04 * k[2], 0.80
    upper = _poly(
        (0.30, st),
        (0.52, st),
        (0.53, 0.56),
        (0.62, 0.63),
        (toe - 0.05, 0.69),
        (toe + 0.01, 0.75),
        (toe, ys),
        (0.29, ys),
    )
    prims = [
        Prim("body", upper),
        Prim("accent", _rrect(0.28, ys, toe + 0.015, ys + 0.03, 0.01)),
        Prim(
            "accent",
            _poly(
                (0.29, ys + 0.03),
                (0.39, ys + 0.03),
                (0.385, ys + 0.03 + hh),
                (0.295, ys + 0.03 + hh),
            ),
        ),
    ]
    if k[3] > 0.5:  # chelsea gusset and pull tab
        prims.append(Prim("shade", _poly((0.45, st + 0.08), (0.51, st + 0.08), (0.49, 0.52))))
        prims.append(Prim("accent", _rrect(0.29, st - 0.05, 0.33, st + 0.05, 0.01)))
    return prims, (0.32, st + 0.1, 0.5, 0.7)


def _shape_handbag(k: Sequence[float]) -> tuple[list[Prim], Box]:
    tw, bw, hh = 0.22 + 0.05 * k[0], 0.30 + 0.05 * k[1], 0.16 + 0.08 * k[2]
    body = _poly(
        (0.5 - tw, 0.42),
        (0.5 + tw, 0.42),
        (0.5 + bw, 0.80),
        (0.5 + bw - 0.03, 0.84),
        (0.5 - bw + 0.03, 0.84),
        (0.5 - bw, 0.80),
    )
    handle = _ellipse(0.5, 0.42, tw * 0.6, hh, 16, math.pi, 2 * math.pi)
    prims = [Prim("body", body), Prim("accent", handle, 0.026)]
    if k[3] > 0.5:  # flap with clasp
        prims.append(
            Prim(
                "shade",
                _poly(
                    (0.5 - tw, 0.42),
                    (0.5 + tw, 0.42),
                    (0.5 + tw * 0.9, 0.58),
                    (0.5, 0.64),
                    (0.5 - tw * 0.9, 0.58),
                ),
            )
        )
        prims.append(Prim("accent", _rrect(0.48, 0.6, 0.52, 0.65, 0.008)))
        return prims, (0.5 - bw * 0.7, 0.67, 0.5 + bw * 0.7, 0.8)
    prims.append(Prim("dark", _poly((0.5 - tw + 0.02, 0.445), (0.5 + tw - 0.02, 0.445)), 0.01))
    prims.append(Prim("accent", _rrect(0.47, 0.43, 0.53, 0.47, 0.008)))
    return prims, (0.5 - tw * 0.8, 0.5, 0.5 + tw * 0.8, 0.78)


def _shape_backpack(k: Sequence[float]) -> tuple[list[Prim], Box]:
    bw, top, r, pt = 0.20 + 0.05 * k[0], 0.16, 0.08 + 0.04 * k[1], 0.52 + 0.05 * k[2]
    prims = [
        Prim("body", _rrect(0.5 - bw, top, 0.5 + bw, 0.88, r)),
        Prim("accent", _ellipse(0.5, top, 0.06, 0.05, 12, math.pi, 2 * math.pi), 0.02),
        Prim("shade", _rrect(0.5 - bw * 0.75, pt, 0.5 + bw * 0.75, 0.84, 0.04)),
        Prim("dark", _poly((0.5 - bw * 0.7, pt + 0.03), (0.5 + bw * 0.7, pt + 0.03)), 0.008),
        Prim("accent", _rrect(0.5 + bw * 0.4, pt + 0.02, 0.5 + bw * 0.48, pt + 0.07, 0.005)),
    ]
    if k[3] > 0.5:  # webbing straps on the front
        for x in (0.5 - bw * 0.45, 0.5 + bw * 0.45):
            prims.append(Prim("accent", _rrect(x - 0.015, top + 0.05, x + 0.015, pt - 0.02, 0.005)))
    return prims, (0.5 - bw * 0.6, top + 0.08, 0.5 + bw * 0.6, pt - 0.04)


def _shape_mug(k: Sequence[float]) -> tuple[list[Prim], Box]:
    mw, top, hx, cx = 0.17 + 0.04 * k[0], 0.26 + 0.06 * k[1], 0.09 + 0.04 * k[2], 0.46
    # Handle first, then its hole, then the cup over it: draw order is the geometry.
    prims = [
        Prim("body", _ellipse(cx + mw, 0.52, hx, 0.13)),
        Prim("hole", _ellipse(cx + mw, 0.52, hx * 0.55, 0.078)),
        Prim("body", _rrect(cx - mw, top, cx + mw, 0.80, 0.02)),
        Prim("body", _ellipse(cx, 0.80, mw, 0.025)),
        Prim("shade", _ellipse(cx, top, mw, 0.025)),
    ]
    if k[3] > 0.5:
        prims.append(Prim("light", _poly((cx - mw, top + 0.07), (cx + mw, top + 0.07)), 0.012))
    return prims, (cx - mw * 0.7, top + 0.1, cx + mw * 0.7, 0.74)


def _shape_lamp(k: Sequence[float]) -> tuple[list[Prim], Box]:
    st, sb, sy, br = 0.10 + 0.05 * k[0], 0.22 + 0.06 * k[1], 0.42 + 0.05 * k[2], 0.13 + 0.04 * k[3]
    rim = _ellipse(0.5, sy, sb, 0.03, 12, 0.0, math.pi)
    shade = np.concatenate([_poly((0.5 - st, 0.14), (0.5 + st, 0.14)), rim])
    prims = [
        Prim("accent", _poly((0.5, sy), (0.5, 0.82)), 0.025),
        Prim("accent", _ellipse(0.5, 0.83, br, 0.04)),
        Prim("body", shade),
        Prim("shade", _poly((0.5 - st, 0.145), (0.5 + st, 0.145)), 0.012),
        Prim("accent", _ellipse(0.5, 0.12, 0.016, 0.016, 10)),
    ]
    return prims, (0.5 - st, 0.18, 0.5 + st, sy - 0.03)


def _shape_watch(k: Sequence[float]) -> tuple[list[Prim], Box]:
    sw, cr = 0.075 + 0.03 * k[0], 0.16 + 0.04 * k[1]
    case = (
        _rrect(0.5 - cr, 0.5 - cr, 0.5 + cr, 0.5 + cr, 0.04)
        if k[2] > 0.6
        else _ellipse(0.5, 0.5, cr, cr)
    )
    dial_role, hand_role = ("dark", "light") if k[3] > 0.5 else ("light", "dark")
    prims = [Prim("body", _rrect(0.5 - sw, 0.06, 0.5 + sw, 0.94, 0.03))]
    prims += [Prim("dark", _ellipse(0.5, y, 0.012, 0.012, 8)) for y in (0.80, 0.85, 0.90)]
    prims += [
        Prim("accent", _rrect(0.5 + cr - 0.01, 0.48, 0.5 + cr + 0.03, 0.52, 0.005)),
        Prim("accent", case),
        Prim(dial_role, _ellipse(0.5, 0.5, cr * 0.82, cr * 0.82)),
    ]
    for a in (0.0, 0.5 * math.pi, math.pi, 1.5 * math.pi):  # hour ticks
        x, y = 0.5 + cr * 0.7 * math.cos(a), 0.5 + cr * 0.7 * math.sin(a)
        prims.append(Prim(hand_role, _ellipse(x, y, 0.01, 0.01, 6)))
    ha = -0.5 * math.pi + 2 * math.pi * k[0]
    prims.append(
        Prim(
            hand_role,
            _poly((0.5, 0.5), (0.5 + cr * 0.45 * math.cos(ha), 0.5 + cr * 0.45 * math.sin(ha))),
            0.014,
        )
    )
    prims.append(
        Prim(
            hand_role,
            _poly(
                (0.5, 0.5),
                (0.5 + cr * 0.7 * math.cos(ha * 3.1), 0.5 + cr * 0.7 * math.sin(ha * 3.1)),
            ),
            0.008,
        )
    )
    return prims, (0.5 - sw * 0.6, 0.09, 0.5 + sw * 0.6, 0.5 - cr - 0.03)


def _shape_hat(k: Sequence[float]) -> tuple[list[Prim], Box]:
    ct, by, cw, bx = 0.24 + 0.08 * k[0], 0.64, 0.19 + 0.04 * k[2], 0.34 + 0.08 * k[1]
    crown = _poly(
        (0.5 - cw, by),
        (0.5 - cw * 0.88, ct + 0.05),
        (0.5 - cw * 0.6, ct),
        (0.5 - 0.03, ct + 0.04),
        (0.5 + 0.03, ct + 0.04),
        (0.5 + cw * 0.6, ct),
        (0.5 + cw * 0.88, ct + 0.05),
        (0.5 + cw, by),
    )
    band = _poly(
        (0.5 - cw * 0.97, by - 0.09),
        (0.5 + cw * 0.97, by - 0.09),
        (0.5 + cw, by - 0.02),
        (0.5 - cw, by - 0.02),
    )
    prims = [Prim("body", _ellipse(0.5, by, bx, 0.07)), Prim("body", crown), Prim("accent", band)]
    if k[3] > 0.5:  # small feather / bow on the band
        prims.append(
            Prim(
                "shade",
                _poly(
                    (0.5 + cw * 0.55, by - 0.09),
                    (0.5 + cw * 0.95, by - 0.16),
                    (0.5 + cw * 0.8, by - 0.05),
                ),
            )
        )
    return prims, (0.5 - cw * 0.6, ct + 0.07, 0.5 + cw * 0.6, by - 0.12)


def _shape_sofa(k: Sequence[float]) -> tuple[list[Prim], Box]:
    bt, at, lh = 0.30 + 0.05 * k[0], 0.44 + 0.04 * k[1], 0.79 + 0.03 * k[2]
    n_cushions = 2 + int(k[3] * 1.99)
    prims = [
        Prim("accent", _rrect(0.12, 0.72, 0.155, lh, 0.005)),
        Prim("accent", _rrect(0.845, 0.72, 0.88, lh, 0.005)),
        Prim("body", _rrect(0.14, bt, 0.86, 0.60, 0.04)),
        Prim("body", _rrect(0.14, 0.56, 0.86, 0.72, 0.03)),
        Prim("body", _rrect(0.08, at, 0.20, 0.74, 0.04)),
        Prim("body", _rrect(0.80, at, 0.92, 0.74, 0.04)),
    ]
    for i in range(1, n_cushions):  # cushion seams
        x = 0.20 + 0.60 * i / n_cushions
        prims.append(Prim("dark", _poly((x, bt + 0.03), (x, 0.55)), 0.006))
        prims.append(Prim("dark", _poly((x, 0.58), (x, 0.70)), 0.006))
    return prims, (0.24, bt + 0.04, 0.76, 0.52)


def _shape_vase(k: Sequence[float]) -> tuple[list[Prim], Box]:
    rn, rb, tb, wd = 0.06 + 0.04 * k[0], 0.18 + 0.08 * k[1], 0.55 + 0.2 * k[2], 0.3 + 0.15 * k[3]
    t = np.linspace(0.0, 1.0, 24)
    r = rn + (rb - rn) * np.exp(-(((t - tb) / wd) ** 2))
    r = np.maximum(r, (0.08 + 0.04 * k[3]) * np.clip((t - 0.75) / 0.25, 0.0, 1.0))
    r = r + 0.025 * np.clip(1.0 - t / 0.06, 0.0, 1.0)  # lip
    y = 0.12 + 0.76 * t
    outline = np.concatenate([np.stack([0.5 - r, y], 1), np.stack([0.5 + r, y], 1)[::-1]])
    band_t = int(np.clip(round((tb - 0.12) * 23), 2, 21))
    band_y, band_r = float(y[band_t]), float(r[band_t]) - 0.01
    prims = [
        Prim("body", outline),
        Prim("dark", _ellipse(0.5, 0.12, rn + 0.02, 0.014, 16)),
        Prim("shade", _poly((0.5 - band_r, band_y), (0.5 + band_r, band_y)), 0.014),
    ]
    box = (0.5 - rb * 0.55, max(0.3, band_y - 0.15), 0.5 + rb * 0.55, min(0.8, band_y + 0.15))
    return prims, box


def _shape_sunglasses(k: Sequence[float]) -> tuple[list[Prim], Box]:
    off, rx, ry, ft = 0.16 + 0.02 * k[0], 0.115 + 0.025 * k[1], 0.085 + 0.04 * k[2], 0.024
    prims: list[Prim] = []
    lenses = []
    for cx in (0.5 - off, 0.5 + off):
        if k[3] > 0.5:  # squarer "wayfarer" lenses
            outer = _rrect(cx - rx - ft, 0.5 - ry - ft, cx + rx + ft, 0.5 + ry + ft, 0.05)
            lens = _rrect(cx - rx, 0.5 - ry, cx + rx, 0.5 + ry, 0.04)
        else:
            outer, lens = _ellipse(cx, 0.5, rx + ft, ry + ft), _ellipse(cx, 0.5, rx, ry)
        prims.append(Prim("body", outer))
        lenses.append(lens)
    prims.append(
        Prim(
            "body",
            _poly((0.5 - off + rx * 0.7, 0.46), (0.5, 0.44), (0.5 + off - rx * 0.7, 0.46)),
            0.028,
        )
    )
    for s in (-1.0, 1.0):  # temple stubs
        x = 0.5 + s * (off + rx + ft * 0.5)
        prims.append(Prim("body", _poly((x, 0.47), (x + s * 0.07, 0.43)), 0.022))
    prims += [Prim("lens", lens) for lens in lenses]
    for cx in (0.5 - off, 0.5 + off):  # glare
        prims.append(
            Prim(
                "light",
                _poly((cx - rx * 0.5, 0.5 - ry * 0.2), (cx - rx * 0.2, 0.5 - ry * 0.6)),
                0.01,
            )
        )
    return prims, (0.5 - off - rx * 0.4, 0.5 - ry * 0.4, 0.5 + off + rx * 0.4, 0.5 + ry * 0.5)


def _shape_bottle(k: Sequence[float]) -> tuple[list[Prim], Box]:
    bw, nw, cap_h = 0.11 + 0.04 * k[0], 0.055, 0.08 + 0.04 * k[1]
    bottom = _ellipse(0.5, 0.86, bw, 0.03, 10, 0.0, math.pi)
    left = [(0.5 - nw, 0.18), (0.5 - nw, 0.24), (0.5 - bw * 0.8, 0.29), (0.5 - bw, 0.34)]
    body = np.concatenate(
        [
            _poly(*left, (0.5 - bw, 0.86)),
            bottom[::-1],
            _poly((0.5 + bw, 0.86), *[(1.0 - x, y) for x, y in reversed(left)]),
        ]
    )
    prims = [
        Prim("body", body),
        Prim("accent", _rrect(0.5 - nw - 0.012, 0.19 - cap_h, 0.5 + nw + 0.012, 0.2, 0.015)),
    ]
    if k[2] > 0.5:  # carry loop on the cap
        prims.append(
            Prim(
                "accent", _ellipse(0.5, 0.19 - cap_h, 0.035, 0.04, 10, math.pi, 2 * math.pi), 0.014
            )
        )
    if k[3] > 0.5:  # grip rings
        for y in (0.62, 0.66):
            prims.append(Prim("shade", _poly((0.5 - bw + 0.01, y), (0.5 + bw - 0.01, y)), 0.01))
    return prims, (0.5 - bw * 0.6, 0.38, 0.5 + bw * 0.6, 0.8)


SHAPES: dict[str, Callable[[Sequence[float]], tuple[list[Prim], Box]]] = {
    "t-shirt": _shape_tshirt,
    "dress": _shape_dress,
    "sneaker": _shape_sneaker,
    "boot": _shape_boot,
    "handbag": _shape_handbag,
    "backpack": _shape_backpack,
    "mug": _shape_mug,
    "lamp": _shape_lamp,
    "watch": _shape_watch,
    "hat": _shape_hat,
    "sofa": _shape_sofa,
    "vase": _shape_vase,
    "sunglasses": _shape_sunglasses,
    "bottle": _shape_bottle,
}


@lru_cache(maxsize=4096)
def design_shape(design: Design) -> tuple[tuple[Prim, ...], Box]:
    """The design's primitives, stretched by its proportions (cached: designs are immutable)."""
    prims, box = SHAPES[design.category.name](design.shape)
    sx, sy = design.stretch

    def stretch(p: np.ndarray) -> np.ndarray:
        return np.stack([0.5 + (p[:, 0] - 0.5) * sx, 0.5 + (p[:, 1] - 0.5) * sy], axis=1)

    out = tuple(Prim(p.role, stretch(p.pts), p.width) for p in prims)
    b = stretch(np.array([[box[0], box[1]], [box[2], box[3]]]))
    return out, (b[0, 0], b[0, 1], b[1, 0], b[1, 1])


def _mark_prim(mark: Mark) -> Prim:
    u, v, s = mark.u, mark.v, mark.size
    if mark.kind == "dot":
        pts = _ellipse(u, v, s, s, 12)
    elif mark.kind == "square":
        pts = _poly((u - s, v - s), (u + s, v - s), (u + s, v + s), (u - s, v + s))
    elif mark.kind == "triangle":
        pts = _poly((u, v - s), (u + s, v + s), (u - s, v + s))
    elif mark.kind == "diamond":
        pts = _poly((u, v - s * 1.3), (u + s, v), (u, v + s * 1.3), (u - s, v))
    else:  # "bar": a little woven label
        pts = _poly(
            (u - s * 1.6, v - s * 0.5),
            (u + s * 1.6, v - s * 0.5),
            (u + s * 1.6, v + s * 0.5),
            (u - s * 1.6, v + s * 0.5),
        )
    return Prim(mark.role, pts)


# --------------------------------------------------------------------------------------------
# Drawing one view of a product
# --------------------------------------------------------------------------------------------


def _luma(c: Sequence[float]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _mix(c: Sequence[float], other: Sequence[float], t: float) -> RGB:
    r, g, b = (int(round(a * (1 - t) + o * t)) for a, o in zip(c, other, strict=True))
    return (r, g, b)


def _pattern_ink(c: RGB) -> RGB:
    """Second colour of a pattern: a clearly darker or lighter tone of the same colour."""
    return _mix(c, (0, 0, 0), 0.45) if _luma(c) > 140 else _mix(c, (255, 255, 255), 0.55)


def _shade(c: RGB) -> RGB:
    return _mix(c, (0, 0, 0), 0.25) if _luma(c) > 50 else _mix(c, (255, 255, 255), 0.2)


@lru_cache(maxsize=16)
def _grid(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs + 0.5, ys + 0.5


class _Pose:
    """Maps object units to pixels for one view (and pixels back, for the pattern)."""

    def __init__(self, view: View, jitter: tuple[float, float]) -> None:
        w, h = view.size
        short = min(w, h)
        self.px = short * view.scale
        th = math.radians(-view.rotation)  # y points down, so negate for counter-clockwise
        self.cos, self.sin = math.cos(th), math.sin(th)
        self.flip = -1.0 if view.mirror else 1.0
        self.cx = w / 2 + (view.offset[0] + jitter[0]) * short
        self.cy = h / 2 + (view.offset[1] + jitter[1]) * short

    def forward(self, pts: np.ndarray, zoom: float = 1.0) -> list[float]:
        x, y = (pts[:, 0] - 0.5) * self.flip, pts[:, 1] - 0.5
        px = (self.cx + self.px * (self.cos * x - self.sin * y)) * zoom
        py = (self.cy + self.px * (self.sin * x + self.cos * y)) * zoom
        return np.stack([px, py], axis=1).ravel().tolist()

    def inverse(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = (xs - self.cx) / self.px, (ys - self.cy) / self.px
        x, y = self.cos * dx + self.sin * dy, -self.sin * dx + self.cos * dy
        return x * self.flip + 0.5, y + 0.5


def _pattern_mask(design: Design, u: np.ndarray, v: np.ndarray) -> np.ndarray | None:
    """Boolean 'ink' mask of the design's pattern, in object coordinates (so it follows pose)."""
    if design.pattern == "solid":
        return None
    pp = design.pattern_params
    a = math.radians(pp.angle)
    s = (u * math.cos(a) + v * math.sin(a) + pp.offset[0]) / pp.period
    t = (-u * math.sin(a) + v * math.cos(a) + pp.offset[1]) / pp.period
    if design.pattern == "striped":
        return (s % 1.0) < pp.duty
    if design.pattern == "polka-dot":
        fu = (s + 0.5 * np.floor(t)) % 1.0 - 0.5  # staggered rows, like real dot prints
        fv = t % 1.0 - 0.5
        return fu * fu + fv * fv < pp.dot_radius**2
    if design.pattern == "checked":
        return (np.floor(s) + np.floor(t)) % 2.0 == 0.0
    tri = np.abs((s * 0.5) % 1.0 - 0.5) * 2.0  # zigzag: stripes bent by a triangle wave
    return ((t + tri) % 1.0) < pp.duty


def _background(kind: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A float32 HxWx3 backdrop: studio sweeps for products, scenes for shopper photos."""
    xs, ys = _grid(w, h)
    if kind == "transparent":
        return np.full((h, w, 3), 255.0, np.float32)
    if kind in ("plain", "texture"):
        base = rng.uniform(226, 252) + rng.normal(0, 4, 3)
        bg = np.broadcast_to(base.astype(np.float32), (h, w, 3)).copy()
        if kind == "texture":  # soft mottling, like paper or a fabric sweep
            coarse = Image.fromarray(rng.normal(0, 1, (5, 5)).astype(np.float32), "F")
            bg += np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC))[..., None] * 5.0
        return bg
    if kind in ("gradient", "dark"):
        lo, hi = (215, 252) if kind == "gradient" else (25, 115)
        c1, c2 = rng.uniform(lo, hi, 3).astype(np.float32), rng.uniform(lo, hi, 3)
        a = rng.uniform(0, 2 * math.pi)
        t = (xs * math.cos(a) + ys * math.sin(a)) / (abs(math.cos(a)) * w + abs(math.sin(a)) * h)
        t = (t - t.min())[..., None]
        return c1 + (c2 - c1).astype(np.float32) * t
    # "scene": a wall and a table top meeting at a horizon, lit from one side.
    wall, table = rng.uniform(120, 235, 3), rng.uniform(55, 200, 3)
    horizon = h * rng.uniform(0.55, 0.8)
    bg = np.where((ys >= horizon)[..., None], table.astype(np.float32), wall.astype(np.float32))
    light = 1.0 + 0.12 * (xs / w - 0.5) * (1 if rng.random() < 0.5 else -1)
    return bg * light[..., None]


def render_product_image(product: Product, view: View, rng: np.random.Generator) -> Image.Image:
    """Render one product from one view.

    Returns RGB, or RGBA (transparent outside the product) when `view.background` is
    "transparent". The same product under another view keeps its design, colour and mark.
    """
    w, h = view.size
    design = product.design
    prims, _ = design_shape(design)
    prims = (*prims, _mark_prim(product.mark))
    pose = _Pose(view, product.jitter)
    bg = _background(view.background, w, h, rng)

    # Body mask drawn at 2x and reduced, for anti-aliased silhouette edges.
    mask2 = Image.new("L", (2 * w, 2 * h), 0)
    md = ImageDraw.Draw(mask2)
    for p in prims:
        if p.role in ("body", "hole"):
            _draw_prim(md, p, pose, 255 if p.role == "body" else 0, zoom=2.0)
    mask = mask2.reduce(2)
    xs, ys = _grid(w, h)

    if view.background not in ("transparent", "dark"):  # contact shadow on the floor
        body_pts = np.concatenate([p.pts for p in prims if p.role == "body"])
        xy = np.asarray(pose.forward(body_pts)).reshape(-1, 2)
        sx, sy = xy[:, 0].mean(), xy[:, 1].max()
        rx, ry = max(8.0, (xy[:, 0].max() - xy[:, 0].min()) * 0.45), 0.035 * min(w, h)
        win = _window(sx - 3 * rx, sy - 3 * ry, sx + 3 * rx, sy + 3 * ry, w, h)
        if win is not None:  # only where the shadow is visible: exp() is not free
            gx, gy = xs[win], ys[win]
            bg[win] *= (1.0 - 0.18 * np.exp(-(((gx - sx) / rx) ** 2) - (((gy - sy) / ry) ** 2)))[
                ..., None
            ]

    # Pattern, lighting and compositing only inside the silhouette's bounding box.
    bbox = mask.getbbox()
    if bbox is not None:
        win = np.s_[bbox[1] : bbox[3], bbox[0] : bbox[2]]
        alpha = np.asarray(mask, np.float32)[win][..., None] / 255.0
        u, v = pose.inverse(xs[win], ys[win])
        base = np.asarray(product.rgb, np.float32)
        ink = _pattern_mask(design, u, v)
        fill = (
            base
            if ink is None
            else np.where(ink[..., None], np.asarray(_pattern_ink(product.rgb), np.float32), base)
        )
        light = (1.06 - 0.12 * (u + v))[..., None]  # soft key light from the top left
        bg[win] += (fill * light - bg[win]) * alpha
    img = Image.fromarray(np.clip(bg, 0, 255, out=bg).astype(np.uint8), "RGB")

    draw = ImageDraw.Draw(img)
    colors = {
        "accent": design.accent,
        "shade": _shade(product.rgb),
        "dark": (30, 30, 34),
        "light": (246, 246, 242),
        "lens": _mix(design.accent, (20, 22, 28), 0.8),
    }
    edge = _mix(product.rgb, (0, 0, 0), 0.5)
    edge_w = max(1, round(pose.px / 150))
    for p in prims:
        if p.role in ("body", "hole"):
            if p.width == 0:  # a thin darker rim makes the silhouette read as an object
                draw.polygon(pose.forward(p.pts), outline=edge, width=edge_w)
        else:
            _draw_prim(draw, p, pose, colors[p.role])

    if view.background == "transparent":
        full = mask.copy()
        fd = ImageDraw.Draw(full)
        for p in prims:
            if p.role not in ("body", "hole"):
                _draw_prim(fd, p, pose, 255)
        img.putalpha(full)
        return img

    if view.noise > 0 or view.blur > 0:
        if view.blur > 0:
            img = img.filter(ImageFilter.GaussianBlur(view.blur))
        if view.noise > 0:
            arr = np.asarray(img, np.float32)
            arr += rng.standard_normal(arr.shape, dtype=np.float32) * view.noise
            img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    if view.jpeg_quality:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=view.jpeg_quality)
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img


def _window(x0: float, y0: float, x1: float, y1: float, w: int, h: int) -> tuple | None:
    """Numpy slice for a pixel box clipped to the canvas, or None when it is off-canvas."""
    c0, r0 = max(0, int(x0)), max(0, int(y0))
    c1, r1 = min(w, int(math.ceil(x1))), min(h, int(math.ceil(y1)))
    return np.s_[r0:r1, c0:c1] if c1 > c0 and r1 > r0 else None


def _draw_prim(
    draw: ImageDraw.ImageDraw, p: Prim, pose: _Pose, fill: int | RGB, zoom: float = 1.0
) -> None:
    pts = pose.forward(p.pts, zoom)
    if p.width > 0:
        draw.line(pts, fill=fill, width=max(1, round(p.width * pose.px * zoom)), joint="curve")
    else:
        draw.polygon(pts, fill=fill)


def studio_view(rng: np.random.Generator, image_format: str) -> View:
    """The catalog shot: centred, upright, clean backdrop, little sensor noise."""
    if image_format == "rgba":
        background = "transparent"
    else:
        background = ("plain", "plain", "plain", "gradient", "gradient", "texture")[rng.integers(6)]
    noisy = image_format != "rgba" and rng.random() < 0.3
    return View(
        size=PRODUCT_IMAGE_SIZE,
        scale=float(rng.uniform(0.86, 0.96)),
        rotation=float(rng.uniform(-3, 3)),
        mirror=False,
        offset=(float(rng.uniform(-0.03, 0.03)), float(rng.uniform(-0.03, 0.03))),
        background=background,
        noise=float(rng.uniform(1.0, 2.5)) if noisy else 0.0,
        blur=0.0,
        jpeg_quality=0,
    )


def query_view(rng: np.random.Generator) -> View:
    """A shopper's photo: other backdrop, 5-25 degree tilt, zoom/crop, maybe mirrored, noisy."""
    size = QUERY_IMAGE_SIZES[rng.integers(len(QUERY_IMAGE_SIZES))]
    rotation = float(rng.uniform(5, 25)) * (1 if rng.random() < 0.5 else -1)
    background = ("plain", "gradient", "texture", "dark", "scene", "scene")[rng.integers(6)]
    return View(
        size=size,
        scale=float(rng.uniform(0.75, 1.3)),
        rotation=rotation,
        mirror=bool(rng.random() < 0.5),
        offset=(float(rng.uniform(-0.1, 0.1)), float(rng.uniform(-0.1, 0.1))),
        background=background,
        noise=float(rng.uniform(2, 6)) if rng.random() < 0.8 else 0.0,
        blur=float(rng.uniform(0.3, 1.0)) if rng.random() < 0.35 else 0.0,
        jpeg_quality=int(rng.integers(55, 86)) if rng.random() < 0.4 else 0,
    )
