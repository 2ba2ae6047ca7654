"""Nuclei of a synthetic tile as soft stamps of stain, drawn all at once per class.

A nucleus is a perturbed ellipse. In its own frame (u, v), rotated by theta and for spindles
bent (v -> v - kappa u^2), a point is inside when t = r / R(phi) < 1, where r = |(u / a, v / b)|,
phi is its angle and R(phi) = 1 + sum_k eps_k cos(k phi + psi_k): k = 2, 3 give pleomorphism,
k = 5..8 the ragged chromosomes of a mitosis. The mask is sigmoid((1 - t) sqrt(ab) / edge),
anti-aliased. Inside, each class has its own hematoxylin (c_H) and eosin (c_E) profile:

- tumour (vesicular): c_H = h0 + 0.9 exp(-((t - 0.87) / 0.12)^2) (beaded chromatin on the membrane)
  + chromatin specks, pale in the centre (h0 ~ 0.1-0.3, darker with proliferation), and in
  some a nucleolus that takes both stains;
- lymphocyte: small, round and dense, c_H ~ 1.7 with coarse texture;
- fibroblast: a thin bent spindle, c_H ~ 1.3;
- mitosis: a ragged dense plate, c_H ~ 2.1, in a clear halo.

Stamps (n, P, P) of every class are added to the tile with one `np.bincount` per stain; a third
stamp, the cover, says how much of the background stain a nucleus displaces (c -> c (1 - cover)).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

# class -> name of its ground-truth count (`gt_<name>`); the classes are disjoint
KINDS = {
    "tumour": "tumour_nuclei",
    "lymphocyte": "lymphocytes",
    "fibroblast": "fibroblasts",
    "mitosis": "mitoses",
}
# class -> semi-major axis a (um), semi-minor axis b as a ratio of a (or in um for spindles),
# boundary harmonics k and the sd of their amplitudes eps_k
SHAPES = {
    "tumour": ((5.0, 6.75), (0.72, 0.95), (2, 3), 0.05),
    "lymphocyte": ((3.0, 3.75), (0.88, 1.0), (2, 3), 0.03),
    "fibroblast": ((6.0, 9.0), (1.25, 1.75), (2, 3), 0.03),  # b in um: 2.5-3.5 um wide
    "mitosis": ((3.5, 5.0), (0.3, 0.45), (5, 6, 7, 8), 0.12),  # a metaphase plate
}
EDGE_UM = 0.25  # width of the soft nuclear edge


def sizes_um() -> dict[str, dict[str, list[float]]]:
    """Length and width ranges of each class's nuclei, um (tumour ones grow 15% with grade)."""
    sizes = {}
    for kind, ((a_low, a_high), (b_low, b_high), _, _) in SHAPES.items():
        width = [b_low, b_high] if kind == "fibroblast" else [a_low * b_low, a_high * b_high]
        sizes[kind] = {"length": [2 * a_low, 2 * a_high], "width": [round(2 * w, 2) for w in width]}
    return sizes


def _geometry(kind: str, n: int, q: dict, rng: np.random.Generator, theta: float) -> dict:
    """Semi-axes a, b (um), angle, boundary harmonics and bend of n nuclei of one class."""
    (a_low, a_high), (b_low, b_high), ks, eps = SHAPES[kind]
    a = rng.uniform(a_low, a_high, n)
    b = rng.uniform(b_low, b_high, n) * (1 if kind == "fibroblast" else a)
    if kind == "tumour":  # faster-growing tumours have larger, more irregular nuclei
        grow = 1 + 0.15 * q["proliferation"]
        a, b, eps = a * grow, b * grow, eps * (1 + q["proliferation"])
    # fibroblasts follow the fibres; other nuclei lie any way
    angle = theta + rng.normal(0, 0.2, n) if kind == "fibroblast" else rng.uniform(0, np.pi, n)
    return {
        "a": a,
        "b": b,
        "theta": angle,
        "ks": np.array(ks),
        "eps": rng.normal(0, eps, (n, len(ks))),
        "psi": rng.uniform(0, 2 * np.pi, (n, len(ks))),
        "bend": rng.normal(0, 0.015, n) if kind == "fibroblast" else np.zeros(n),  # 1/um
    }


def _frame(xy: np.ndarray, g: dict, mpp: float, extent_um: float):
    """Stamps: origin (n, 2) px; u, v (n, P, P) um in each nucleus' frame; t the shape radius."""
    size = int(np.ceil(2 * extent_um / mpp)) + 2
    px = xy / mpp
    origin = np.floor(px).astype(int) - size // 2  # top-left pixel of each stamp
    grid = np.arange(size) + 0.5
    dx = ((origin[:, 0, None] + grid - px[:, 0, None]) * mpp)[:, None, :]  # (n, 1, P) um
    dy = ((origin[:, 1, None] + grid - px[:, 1, None]) * mpp)[:, :, None]  # (n, P, 1) um
    c, s = np.cos(g["theta"])[:, None, None], np.sin(g["theta"])[:, None, None]
    u = c * dx + s * dy
    v = -s * dx + c * dy - g["bend"][:, None, None] * u**2
    ru, rv = u / g["a"][:, None, None], v / g["b"][:, None, None]
    r = np.hypot(ru, rv)
    # R(phi) = 1 + Re sum_k eps_k e^{i psi_k} w^k with w = e^{i phi}: powers, no trigonometry
    w = (ru + 1j * rv) / np.maximum(r, 1e-9)
    coef = g["eps"] * np.exp(1j * g["psi"])  # (n, K)
    power, wave = np.ones_like(w), np.zeros_like(w)
    for k in range(1, max(g["ks"]) + 1):
        power *= w
        if k in g["ks"]:
            wave += coef[:, list(g["ks"]).index(k), None, None] * power
    return origin, u, v, r / (1 + wave.real)


def _specks(rng: np.random.Generator, shape, mpp: float) -> np.ndarray:
    """Unit-sd chromatin texture with ~0.5 um grains, (n, P, P)."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), (0, 0.4 / mpp, 0.4 / mpp))
    return noise / (noise.std() + 1e-8)


def _stain(kind: str, g: dict, u, v, t, q: dict, rng: np.random.Generator, mpp: float):
    """Stamps (n, P, P) of one class: the mask, c_H, c_E and how much background they cover."""
    ab = np.sqrt(g["a"] * g["b"])[:, None, None]
    mask = 1 / (1 + np.exp(-np.clip((1 - t) * ab / max(EDGE_UM, 0.4 * mpp), -30, 30)))
    specks = _specks(rng, t.shape, mpp)
    n = len(t)
    if kind == "tumour":
        h0 = rng.uniform(0.1, 0.3, n)[:, None, None] * (1 + 0.8 * q["proliferation"])
        beads = np.clip(1 + 0.35 * specks, 0.3, None)  # chromatin clumps along the membrane
        rim = 0.9 * np.exp(-(((t - 0.87) / 0.12) ** 2)) * beads
        nucleolus = _nucleolus(g, u, v, rng, q)
        h = mask * (h0 + rim + 0.45 * np.clip(specks, 0, None) + 0.5 * nucleolus)
        return mask, h, mask * (0.03 + 0.6 * nucleolus), 0.85 * mask
    if kind == "lymphocyte":
        return mask, mask * (1.7 + 0.25 * specks), 0.05 * mask, mask
    if kind == "fibroblast":
        return mask, mask * (1.3 + 0.15 * specks), 0.05 * mask, mask
    halo = np.exp(-(np.hypot(u, v) / 5.0) ** 2)  # the cytoplasm of a dividing cell clears
    return mask, mask * (2.1 + 0.35 * specks), 0.05 * mask, np.maximum(mask, 0.5 * halo)


def _nucleolus(g: dict, u, v, rng: np.random.Generator, q: dict) -> np.ndarray:
    """At most one off-centre Gaussian spot (n, P, P) of radius 0.4-1.2 um per nucleus."""
    n = len(u)
    # Prominent nucleoli mark high grade; the section cuts through one in only some nuclei.
    shown = rng.random(n) < 0.3 + 0.6 * q["proliferation"]
    radius = rng.uniform(0.4, 0.8, n) * (1 + 0.5 * q["proliferation"])
    cu = rng.uniform(-0.35, 0.35, n) * g["a"]
    cv = rng.uniform(-0.35, 0.35, n) * g["b"]
    d2 = (u - cu[:, None, None]) ** 2 + (v - cv[:, None, None]) ** 2
    return shown[:, None, None] * np.exp(-d2 / (2 * radius[:, None, None] ** 2))


def draw_nuclei(conc, cells: dict, q: dict, rng, mpp: float, theta: float, labels: bool):
    """Add the nuclei of `cells` (class -> (n, 2) centres in um) to conc (S, S, 2).

    Returns the new conc, the nuclei table and, if `labels`, the (S, S) label map. `theta` is the
    direction of the stromal fibres, which fibroblasts follow.
    """
    size = conc.shape[0]
    canvas = _Canvas(size, pad=int(np.ceil(30 / mpp)), labels=labels)  # room for 8 um outside
    parts = []
    for kind in ("fibroblast", "lymphocyte", "tumour", "mitosis"):
        xy = np.reshape(cells[kind], (-1, 2))
        first_id = 1 + sum(len(part["kind"]) for part in parts)
        area = _draw_class(canvas, kind, xy, q, rng, mpp, theta, first_id) if len(xy) else []
        inside = np.all((xy >= 0) & (xy < size * mpp), axis=1)  # counted in the ground truth
        parts.append({"kind": [kind] * len(xy), "x_um": xy[:, 0], "y_um": xy[:, 1]})
        parts[-1].update(area_um2=area, inside=inside)
    h, e, cover = canvas.layers()
    # A nucleus displaces the cytoplasm or stroma under it: the pale centre of a vesicular nucleus.
    conc = conc * (1 - np.clip(cover, 0, 1))[..., None] + np.stack([h, e], -1)
    table = pd.DataFrame({k: np.concatenate([part[k] for part in parts]) for k in parts[0]})
    return conc, table, canvas.label_map()


def _draw_class(canvas, kind: str, xy, q: dict, rng, mpp: float, theta: float, first_id: int):
    """Stamp n nuclei of one class on the canvas; returns their areas (n,) in um^2."""
    g = _geometry(kind, len(xy), q, rng, theta)
    # R(phi) <= 1 + sum_k |eps_k|: no nucleus is cut at its stamp's edge; a mitosis' halo is wider
    reach = g["a"] * (1 + np.abs(g["eps"]).sum(1))
    extent = max(reach.max() + 1.0, 7.0 if kind == "mitosis" else 0)
    origin, u, v, t = _frame(xy, g, mpp, extent)
    mask, h, e, cover = _stain(kind, g, u, v, t, q, rng, mpp)
    canvas.add(origin, mask, (h, e, cover), first_id)
    return mask.sum((1, 2)) * mpp**2


class _Canvas:
    """Sums stamps (n, P, P) into padded (S, S) layers with np.bincount, one call per layer."""

    def __init__(self, size: int, pad: int, labels: bool):
        self.size, self.pad, self.width = size, pad, size + 2 * pad
        self.flat = np.zeros((3, self.width**2))  # c_H, c_E and cover of the background
        self.labels = np.zeros(self.width**2, np.int32) if labels else None

    def add(self, origin: np.ndarray, mask: np.ndarray, layers, first_id: int) -> None:
        p = mask.shape[1]
        iy = origin[:, 1, None, None] + self.pad + np.arange(p)[None, :, None]
        ix = origin[:, 0, None, None] + self.pad + np.arange(p)[None, None, :]
        index = (iy * self.width + ix).ravel()
        for flat, layer in zip(self.flat, layers):
            flat += np.bincount(index, layer.ravel(), self.width**2)
        if self.labels is not None:  # later nuclei win where two overlap
            ids = first_id + np.broadcast_to(np.arange(len(mask))[:, None, None], mask.shape)
            on = mask.ravel() > 0.5
            self.labels[index[on]] = ids.ravel()[on]

    def _crop(self, flat: np.ndarray) -> np.ndarray:
        inner = slice(self.pad, self.pad + self.size)
        return flat.reshape(self.width, self.width)[inner, inner]

    def layers(self):
        return [self._crop(f) for f in self.flat]

    def label_map(self):
        return None if self.labels is None else self._crop(self.labels)
