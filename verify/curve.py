"""Robust error against eps from the results of ``verify radius`` (one radius bracket per example).

A radius row brackets an example's minimum adversarial distortion r* (in the run's norm p):
``lower <= r* <= upper``: the example is proven robust at every eps <= lower (a bound
certificate at that closed ball, or a MIP dual bound with a slack below it), and a
float64-confirmed counterexample lies at distance ``upper``. From the brackets alone, with no re-verification, follow five curves
of the fraction of examples that are (or may be) non-robust at each eps of a grid:

=========  ====================================================================  ==============
curve      an example counts at eps e when                                       what it bounds
=========  ====================================================================  ==============
clean      its centre is misclassified (constant)                                clean error
pgd        PGD alone found a counterexample within e (``upper_pgd <= e``)         robust error >=
certified  bound propagation alone does not prove it robust at e                 robust error <=
           (``lower_bounds < e``)
lb         a float64-confirmed counterexample lies within e (``upper <= e``)      robust error >=
ub         it is not proven robust at e (``lower < e``)                           robust error <=
=========  ====================================================================  ==============

``ub - lb`` at e is the fraction still bracketed there; misclassified examples count in every
curve at every e. Pure Python and numpy (matplotlib only for the plots): reading a run's results
does not load torch's solvers.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Mapping, Sequence

import numpy as np

from .atomic import write_atomic, write_atomic_with
from .errors import SpecError

# The columns of a radius row, in this order in every CSV, JSON and store.
RADIUS_FIELDS = ("index", "label", "prediction", "status", "lower", "upper", "lower_bounds", "upper_pgd", "lower_by",
                 "upper_by", "target", "seconds", "reason")
RADIUS_STATUSES = ("exact", "bracketed", "beyond", "misclassified")
CURVE_KEYS = ("eps", "clean", "pgd", "certified", "lb", "ub")
CURVE_LABELS = {"clean": "clean", "pgd": "PGD", "certified": "certified", "lb": "LB", "ub": "UB"}
_VALUE_FIELDS = ("lower", "upper", "lower_bounds", "upper_pgd")
MAX_GRID_POINTS = 100_000


def is_radius_results(config: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a results file holds ``verify radius`` rows (by its configuration, or by its rows' columns)."""
    if config.get("command") == "radius":
        return True
    return bool(rows) and all("lower" in r and "upper" in r for r in rows)


def order_radius_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row with the RADIUS_FIELDS columns first, in that order (a store keeps its own key order)."""
    out = {k: row.get(k) for k in RADIUS_FIELDS if k in row}
    out.update({k: v for k, v in row.items() if k not in out})
    return out


def _num(v: Any) -> float | None:
    """A row's number (JSON may spell infinities as strings), or None where there is none."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _checked(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, float | None]]:
    """Each row's four numbers; misclassified rows count at every eps whatever they hold."""
    out = []
    for r in rows:
        status = r.get("status")
        if status not in RADIUS_STATUSES:
            raise SpecError(f"example {r.get('index')}: status {status!r} is not a radius status "
                            f"({', '.join(RADIUS_STATUSES)}): not the results of 'verify radius'")
        vals = {k: _num(r.get(k)) for k in _VALUE_FIELDS}
        if status == "misclassified":  # non-robust at every eps, 0 included
            vals = {k: (-math.inf if k in ("lower", "lower_bounds") else 0.0) for k in _VALUE_FIELDS}
        else:
            # a missing proven radius proves nothing: -inf (counted from eps 0 on, the safe side of UB)
            vals["lower"] = vals["lower"] if vals["lower"] is not None else -math.inf
            vals["lower_bounds"] = vals["lower_bounds"] if vals["lower_bounds"] is not None else -math.inf
        vals["misclassified"] = 1.0 if status == "misclassified" else 0.0
        out.append(vals)
    return out


def check_grid(grid: Sequence[float] | np.ndarray) -> np.ndarray:
    """The grid as a float64 array; SpecError for an empty grid or a negative, NaN or infinite eps."""
    g = np.asarray(grid, dtype=np.float64).reshape(-1)
    if g.size == 0:
        raise SpecError("the eps grid is empty")
    if g.size > MAX_GRID_POINTS:
        raise SpecError(f"the eps grid has {g.size} points; at most {MAX_GRID_POINTS}")
    if not np.isfinite(g).all():
        raise SpecError("the eps grid holds a NaN or infinite eps")
    if (g < 0).any():
        raise SpecError(f"eps must be >= 0, got {float(g.min()):g}")
    return g


def curves(rows: Sequence[Mapping[str, Any]], grid: Sequence[float] | np.ndarray) -> dict[str, np.ndarray]:
    """The five curves (fractions of all rows) at each eps of ``grid``: keys eps, clean, pgd, certified, lb, ub."""
    g = check_grid(grid)
    vals = _checked(rows)
    n = len(vals)
    out: dict[str, np.ndarray] = {"eps": g}
    if n == 0:
        return {**out, **{k: np.zeros_like(g) for k in CURVE_KEYS[1:]}}

    def frac(key: str, strict: bool = False) -> np.ndarray:
        v = np.array([np.inf if r[key] is None else r[key] for r in vals], dtype=np.float64)  # None: never
        hit = v[None, :] < g[:, None] if strict else v[None, :] <= g[:, None]
        return np.asarray(hit.sum(axis=1) / n, dtype=np.float64)

    out["clean"] = np.full_like(g, sum(r["misclassified"] or 0.0 for r in vals) / n)
    out["pgd"] = frac("upper_pgd")
    # a proven radius covers its closed ball: not robust-proven at e only when lower < e
    out["certified"] = frac("lower_bounds", strict=True)
    out["lb"] = frac("upper")
    out["ub"] = frac("lower", strict=True)
    return out


def _nice_ceil(x: float) -> float:
    """The smallest of 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 (times a power of ten) that is >= x."""
    k = math.floor(math.log10(x))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        v = round(m * 10.0**k, 12)
        if v >= x:
            return v
    return 10.0 ** (k + 1)  # pragma: no cover - 10 * 10**k >= x always


def grid_top(rows: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> float:
    """The largest eps worth showing: the run's max_eps, else a round number above every finite radius."""
    max_eps = _num(config.get("max_eps"))
    if max_eps is not None and math.isfinite(max_eps) and max_eps > 0:
        return max_eps
    finite = [v for r in rows for k in _VALUE_FIELDS if (v := _num(r.get(k))) is not None and math.isfinite(v)]
    top = max(finite, default=0.0)
    return _nice_ceil(top) if top > 0 else 1.0


def default_grid(rows: Sequence[Mapping[str, Any]], config: Mapping[str, Any], points: int = 51) -> np.ndarray:
    """``points`` evenly spaced eps from 0 to :func:`grid_top` (both included)."""
    return np.round(np.linspace(0.0, grid_top(rows, config), max(points, 2)), 12)


def plot_grid(rows: Sequence[Mapping[str, Any]], top: float, points: int = 401) -> np.ndarray:
    """A grid for drawing exact step curves up to ``top``: an even grid plus every radius (jump) at or below it."""
    jumps = [v for r in rows for k in _VALUE_FIELDS if (v := _num(r.get(k))) is not None and 0 <= v <= top]
    return np.unique(np.concatenate([np.linspace(0.0, top, points), np.asarray(jumps, dtype=np.float64)]))


def parse_grid(text: str) -> np.ndarray:
    """``START:STOP:STEP`` (STOP included when the steps reach it) or a comma list, as a sorted eps grid."""
    t = text.strip()
    try:
        if ":" in t:
            parts = [float(s) for s in t.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if not all(math.isfinite(v) for v in parts):
                raise SpecError(f"--grid {text!r}: START, STOP and STEP must be finite")
            if step <= 0:
                raise SpecError(f"--grid {text!r}: STEP must be > 0")
            if stop < start:
                raise SpecError(f"--grid {text!r}: STOP is below START")
            count = math.floor((stop - start) / step + 1e-9) + 1
            if count > MAX_GRID_POINTS:
                raise SpecError(f"--grid {text!r} has {count} points; at most {MAX_GRID_POINTS}")
            g = np.round(start + step * np.arange(count), 12)
        else:
            g = np.asarray([float(s) for s in t.split(",") if s.strip()], dtype=np.float64)
    except ValueError:
        raise SpecError(f"--grid must be START:STOP:STEP (e.g. 0:0.1:0.01) or a comma list (e.g. 0,0.05,0.1), "
                        f"got {text!r}") from None
    return np.unique(check_grid(g))


def radius_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """n, clean error, the exact radii's mean and median (of ``upper``), the fractions bracketed and beyond
    max_eps, and seconds per example (fractions of n; None where there is nothing to average)."""
    _checked(rows)
    n = len(rows)
    status = [r["status"] for r in rows]
    exact = [u for r in rows if r["status"] == "exact" and (u := _num(r.get("upper"))) is not None]
    secs = [_num(r.get("seconds")) or 0.0 for r in rows]
    count = {s: status.count(s) for s in RADIUS_STATUSES}
    return {
        "n": n,
        "clean_error": count["misclassified"] / n if n else 0.0,
        "n_exact": count["exact"],
        "n_bracketed": count["bracketed"],
        "n_beyond": count["beyond"],
        "n_misclassified": count["misclassified"],
        "exact": count["exact"] / n if n else 0.0,
        "bracketed": count["bracketed"] / n if n else 0.0,
        "beyond": count["beyond"] / n if n else 0.0,
        "mean_radius": float(statistics.fmean(exact)) if exact else None,
        "median_radius": float(statistics.median(exact)) if exact else None,
        "mean_seconds": float(statistics.fmean(secs)) if secs else None,
        "median_seconds": float(statistics.median(secs)) if secs else None,
        "total_seconds": float(sum(secs)),
    }


def check_csv_path(path: str) -> None:
    if not str(path).endswith(".csv"):
        raise SpecError(f"--csv must end in .csv, got {path!r}")


def write_curve_csv(path: str, curves: Mapping[str, np.ndarray]) -> None:
    """The curves as CSV (columns eps, clean, pgd, certified, lb, ub; fractions of n), atomically."""
    check_csv_path(path)
    lines = [",".join(CURVE_KEYS)]
    for i in range(len(curves["eps"])):
        lines.append(",".join(repr(float(curves[k][i])) for k in CURVE_KEYS))
    write_atomic(path, "\n".join(lines) + "\n")


def norm_tex(p: str | None) -> str:
    """The norm's subscript in mathtext ('inf' -> \\infty)."""
    s = str(p) if p is not None else "p"
    return r"\infty" if s in ("inf", "linf", "infinity") else s


_FORMATS = (".png", ".pdf", ".svg")


def check_figure_path(path: str, option: str) -> None:
    """SpecError unless ``path`` ends in a format the plots write (.png, .pdf, .svg)."""
    if not str(path).lower().endswith(_FORMATS):
        raise SpecError(f"{option} must end in {', '.join(_FORMATS)}, got {path!r}")


def _save(fig: Any, path: str) -> None:
    """Save a figure atomically (the format from the path's ending; the temporary file keeps it)."""
    write_atomic_with(path, lambda tmp: fig.savefig(tmp, dpi=fig.dpi))


CURVES_FIGSIZE = (7.0, 4.5)  # inches at 120 dpi: an 840 x 540 PNG
CURVES_DPI = 120


def plot_curves(curves: Mapping[str, np.ndarray], path: str, title: str, p: str | None = None) -> None:
    """Robust error (%) against eps as step curves: LB and UB with the bracketed band between them
    shaded, PGD dashed, certified dotted, clean error a horizontal line."""
    check_figure_path(path, "the plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = np.asarray(curves["eps"])
    pct = {k: 100 * np.asarray(curves[k]) for k in CURVE_KEYS[1:]}
    fig, ax = plt.subplots(figsize=CURVES_FIGSIZE, dpi=CURVES_DPI)
    ax.fill_between(eps, pct["lb"], pct["ub"], step="post", color="tab:blue", alpha=0.18, lw=0,
                    label="bracketed (UB - LB)")
    ax.step(eps, pct["ub"], where="post", color="tab:red", lw=1.6, label="UB: not proven robust (exact)")
    ax.step(eps, pct["lb"], where="post", color="tab:blue", lw=1.6, label="LB: counterexample found (exact)")
    ax.step(eps, pct["pgd"], where="post", color="tab:orange", lw=1.2, ls="--", label="PGD (attack only)")
    ax.step(eps, pct["certified"], where="post", color="tab:purple", lw=1.2, ls=":",
            label="certified (bounds only)")
    clean = float(pct["clean"][0]) if len(eps) else 0.0
    ax.axhline(clean, color="tab:gray", lw=1.0, label=f"clean error ({clean:.1f}%)")
    sub = norm_tex(p)
    ax.set_xlabel(rf"$\epsilon$ ($\ell_{{{sub}}}$ distance)")
    ax.set_ylabel("robust error (%)")
    ax.set_title(title, fontsize=9)
    if len(eps):
        ax.set_xlim(float(eps.min()), float(eps.max()) if eps.max() > eps.min() else float(eps.min()) + 1)
    # a robust model's curves stay near the bottom: zoom the axis to them (but always show 0..5%)
    top = max([float(v.max()) for v in pct.values() if v.size] + [0.0])
    upper = 102.0 if top > 60 else max(5.0, 1.25 * top)
    ax.set_ylim(-upper / 50, upper)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def as_image(x: np.ndarray) -> np.ndarray:
    """One input as an image: (H, W) for one channel, (H, W, 3) for three. Accepts (C, H, W), (H, W), or a
    flat vector of a square one-channel (784 -> 28 x 28) or three-channel (3072 -> 3 x 32 x 32) image."""
    a = np.asarray(x, dtype=np.float64)
    a = a.reshape(a.shape[1:]) if a.ndim >= 2 and a.shape[0] == 1 and a.ndim in (2, 4) else a
    if a.ndim == 1:
        s1, s3 = math.isqrt(a.size), math.isqrt(a.size // 3)
        if s1 * s1 == a.size:
            a = a.reshape(1, s1, s1)
        elif 3 * s3 * s3 == a.size:
            a = a.reshape(3, s3, s3)
        else:
            raise SpecError(f"cannot show an input of {a.size} values as an image (not 1 x n x n or 3 x n x n)")
    if a.ndim == 3 and a.shape[0] in (1, 3):
        return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))
    if a.ndim == 2:
        return a
    raise SpecError(f"cannot show an input of shape {tuple(np.shape(x))} as an image (want C x H x W, C 1 or 3)")


EXAMPLE_ROW_INCHES = 2.5  # each example is a 750 x 250 pixel strip at 100 dpi
EXAMPLE_WIDTH_INCHES = 7.5
EXAMPLE_DPI = 100


def plot_examples(
    originals: Sequence[np.ndarray],
    adversarials: Sequence[np.ndarray],
    labels: Sequence[int],
    predictions_adv: Sequence[int | None],
    distances: Sequence[float],
    path: str,
    p: str | None,
) -> None:
    """A grid, one row per example: the original (with its label), the perturbation (diverging colours,
    symmetric range, its norm), the adversarial input (with the class the network gives it)."""
    check_figure_path(path, "--examples-png")
    k = len(originals)
    if not (k == len(adversarials) == len(labels) == len(predictions_adv) == len(distances)):
        raise SpecError("plot_examples: originals, adversarials, labels, predictions and distances differ in length")
    if k == 0:
        raise SpecError("no counterexamples to draw")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = norm_tex(p)
    fig, axes = plt.subplots(k, 3, figsize=(EXAMPLE_WIDTH_INCHES, EXAMPLE_ROW_INCHES * k), dpi=EXAMPLE_DPI,
                             squeeze=False)
    for i in range(k):
        x0, x1 = as_image(originals[i]), as_image(adversarials[i])
        if x0.shape != x1.shape:
            raise SpecError(f"example {i}: the original {x0.shape} and the adversarial {x1.shape} differ in shape")
        lo, hi = min(0.0, float(x0.min()), float(x1.min())), max(1.0, float(x0.max()), float(x1.max()))
        delta = x1 - x0
        if delta.ndim == 3:  # per pixel, the channel changed most (with its sign)
            pick = np.abs(delta).argmax(axis=2)
            delta = np.take_along_axis(delta, pick[..., None], axis=2)[..., 0]
        m = float(np.abs(delta).max()) or 1e-12
        a, b, c = axes[i]
        for ax, img, txt in ((a, x0, f"original: label {labels[i]}"),
                             (c, x1, "adversarial: class " + ("?" if predictions_adv[i] is None else str(predictions_adv[i])))):
            if img.ndim == 3:
                ax.imshow(np.clip((img - lo) / (hi - lo), 0, 1))
            else:
                ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
            ax.set_title(txt, fontsize=9)
        im = b.imshow(delta, cmap="RdBu_r", vmin=-m, vmax=m)
        b.set_title(rf"perturbation $\|\delta\|_{{{sub}}}$ = {distances[i]:.4g}", fontsize=9)
        fig.colorbar(im, ax=b, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
        for ax in (a, b, c):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def lp_distance(a: np.ndarray, b: np.ndarray, p: str) -> float:
    """||a - b||_p over all values (float64), p as the results name it ('inf', '1', '2')."""
    from .spec import parse_p

    d = (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).reshape(-1)
    return float(np.linalg.norm(d, ord=parse_p(p))) if d.size else 0.0


__all__ = ["CURVE_KEYS", "RADIUS_FIELDS", "as_image", "check_csv_path", "check_figure_path", "curves", "default_grid",
           "grid_top", "is_radius_results", "lp_distance", "order_radius_row", "parse_grid", "plot_curves", "plot_examples",
           "plot_grid", "radius_summary", "write_curve_csv"]
