"""Exact L1 and Linf operator norms of affine layers, spectral-norm estimates, per-layer records.

For a linear map A, ||A||_1 (induced by the L1 norm on both sides) is the largest column
absolute sum and ||A||_inf the largest row absolute sum. Liang et al. ("Large Norms of CNN
Layers Do Not Hurt Adversarial Robustness", AAAI 2021) compute both for a convolution from
its kernel alone, without the dense matrix; this module does the same, exactly, for any
stride and (asymmetric) zero padding:

* Every entry of a convolution's matrix is a single kernel weight: output (o, i, j) and input
  (c, y, x) are linked by at most one tap (a, b), the one with i*s + a - pad_top = y (and the
  same across columns). So absolute row and column sums are sums of |w| over tap sets.
* **Rows (Linf).** Output row i sees the taps a whose input coordinate i*s + a - pad_top lands
  inside [0, H): near the border some taps fall on the padding. The row sum is the sum of
  |w[o, :, a, b]| over (row taps) x (column taps), and only a handful of distinct tap sets
  occur per axis (all taps in the interior, fewer at each border).
* **Columns (L1).** Input pixel y is reached by the taps a with (y + pad_top - a) divisible by
  the stride and the output index (y + pad_top - a) / s inside [0, H_out): its *tap class*.
  With stride 1 and enough room every pixel sees every tap; with stride 2 the taps split into
  classes by parity, and border pixels see fewer. The column sum is the sum of
  |w[:, c, a, b]| over its classes.

Both come out as ``max over (channel, row-tap set, column-tap set)`` of an ``einsum`` of
0/1 masks with the summed kernel: differentiable in the weight (training penalises it, see
``training/regularizers/norm_decay.py``) and far cheaper than the dense matrix
(``benchmarks/norms.py``). Tests check them against ``Conv2d.matrix(in_shape)``.

BatchNorm (eval mode) and every :class:`~verify.network.ChannelAffine` are diagonal:
every induced p-norm is ``max |scale|`` = ``max |gamma / sqrt(running_var + eps)|``.

The spectral norm (p = 2) has no such formula for a convolution: :func:`spectral_norm_estimate`
runs power iteration on the layer's own ``linear`` / ``linear_t`` (its value ||A v|| with
||v|| = 1 is always a lower bound), and ``sqrt(||A||_1 ||A||_inf)`` is a guaranteed upper bound
(Riesz-Thorin), used where a bound must be rigorous.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence, cast

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ModelError, SpecError, UnsupportedLayerError, VerifyError
from ..network import (
    AffineLayer,
    AvgPool2d,
    ChannelAffine,
    Conv2d,
    Flatten,
    Layer,
    Linear,
    Network,
    Shape,
    _ConvLike,
)
from ..spec import p_name, parse_p

if TYPE_CHECKING:
    from ..torch_modules import ChannelAffineModule

# --------------------------------------------------------------------------- the tap sets


def _axis_tap_masks(n_in: int, k: int, s: int, pad_before: int, pad_after: int) -> tuple[np.ndarray, np.ndarray]:
    """Along one spatial axis: the distinct tap sets of the output rows and of the input columns.

    Returns (row_masks (R, k), col_masks (Q, k)) of 0/1: row_masks holds, for each distinct
    output index i, the taps a with 0 <= i*s + a - pad_before < n_in; col_masks holds, for each
    distinct input index y, the taps a that reach y from some output index in range.
    """
    n_out = (n_in + pad_before + pad_after - k) // s + 1
    if n_out <= 0:
        raise ModelError(f"a kernel of size {k} does not fit an input of size {n_in} with padding {(pad_before, pad_after)}")
    taps = np.arange(k)
    i = np.arange(n_out)[:, None]
    pos = i * s + taps[None, :] - pad_before  # (n_out, k): input coordinate of each tap
    rows = (pos >= 0) & (pos < n_in)
    y = np.arange(n_in)[:, None]
    num = y + pad_before - taps[None, :]  # = i * s for the output index i that reaches y through tap a
    cols = (num >= 0) & (num % s == 0) & (num // s < n_out)
    return np.unique(rows.astype(np.float64), axis=0), np.unique(cols.astype(np.float64), axis=0)


_MASK_CACHE: dict[tuple[tuple[int, ...], ...], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}


def conv_tap_masks(
    in_hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(row_h, row_w, col_h, col_w): the distinct tap sets per axis (see the module docstring).

    ``padding`` is (top, bottom, left, right), as in :class:`verify.network.Conv2d`.
    """
    key = (tuple(in_hw), tuple(kernel), tuple(stride), tuple(padding))
    hit = _MASK_CACHE.get(key)
    if hit is None:
        t, b, l, r = padding
        rh, ch = _axis_tap_masks(in_hw[0], kernel[0], stride[0], t, b)
        rw, cw = _axis_tap_masks(in_hw[1], kernel[1], stride[1], l, r)
        hit = (rh, rw, ch, cw)
        if len(_MASK_CACHE) > 512:
            _MASK_CACHE.clear()
        _MASK_CACHE[key] = hit
    return hit


def _masked_max(a: Tensor, mh: np.ndarray, mw: np.ndarray) -> Tensor:
    """max over (channel c, row mask, column mask) of sum_{a,b} mh[a] * A[c, a, b] * mw[b]."""
    th = torch.as_tensor(mh, dtype=a.dtype, device=a.device)
    tw = torch.as_tensor(mw, dtype=a.dtype, device=a.device)
    return torch.einsum("ha,cab,wb->chw", th, a, tw).amax()


def _check_p(p: float | str) -> float:
    v = parse_p(p)
    if v == 2.0:
        raise SpecError("exact operator norms are for p = 1 or inf; use spectral_norm_estimate for p = 2")
    return v


def conv_operator_norm(
    weight: Tensor,
    in_hw: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    p: float | str,
    *,
    depthwise: bool = False,
) -> Tensor:
    """Exact ||conv||_p for p = 1 (max column abs sum) or inf (max row abs sum); differentiable in ``weight``.

    ``weight`` is OIHW; ``depthwise``: one (1, kh, kw) kernel per channel (AvgPool2d, shape (C, 1, kh, kw)).
    """
    pv = _check_p(p)
    if weight.ndim != 4:
        raise ModelError(f"a conv kernel must be 4-D (out, in, kh, kw), got shape {tuple(weight.shape)}")
    kernel = (int(weight.shape[2]), int(weight.shape[3]))
    rh, rw, ch, cw = conv_tap_masks(in_hw, kernel, stride, padding)
    w = weight.abs()
    if depthwise:  # channel c only feeds output channel c: rows and columns both see one kernel
        a = w[:, 0]
    elif math.isinf(pv):
        a = w.sum(1)  # rows of output channel o: every input channel
    else:
        a = w.sum(0)  # columns of input channel c: every output channel
    if math.isinf(pv):
        return _masked_max(a, rh, rw)
    return _masked_max(a, ch, cw)


def linear_operator_norm(weight: Tensor, p: float | str) -> Tensor:
    """||W||_1 = max column abs sum, ||W||_inf = max row abs sum; differentiable."""
    pv = _check_p(p)
    return weight.abs().sum(1 if math.isinf(pv) else 0).amax()


def diagonal_operator_norm(scale: Tensor) -> Tensor:
    """Every induced p-norm of a diagonal map: max |scale| (BatchNorm, ChannelAffine)."""
    return scale.abs().amax()


def batchnorm_scale(m: nn.modules.batchnorm._BatchNorm) -> Tensor:
    """gamma / sqrt(running_var + eps): the per-channel factor of BatchNorm in eval mode (live, differentiable)."""
    if m.running_var is None:
        raise UnsupportedLayerError(f"{type(m).__name__} without running statistics has no fixed operator norm")
    denom = torch.sqrt(m.running_var + m.eps)
    return (m.weight if m.weight is not None else torch.ones_like(denom)) / denom


# --------------------------------------------------------------------------- Network layers


def operator_norm(layer: Layer, in_shape: Shape, p: float | str) -> float:
    """Exact ||layer||_p (p = 1 or inf) of a Network affine layer acting on inputs of ``in_shape``."""
    return float(_layer_norm_tensor(layer, in_shape, p))


def _layer_norm_tensor(layer: Layer, in_shape: Shape, p: float | str) -> Tensor:
    if isinstance(layer, Linear):
        return linear_operator_norm(layer.weight, p)
    if isinstance(layer, _ConvLike):
        if len(in_shape) != 3:
            raise ModelError(f"{layer.describe()} needs a (C, H, W) input, got {in_shape}")
        c = in_shape[0]
        k = layer._kernel(torch.zeros((1, c, 1, 1), dtype=torch.float64))
        return conv_operator_norm(k, (in_shape[1], in_shape[2]), layer.stride, layer.padding, p,
                                  depthwise=isinstance(layer, AvgPool2d))
    if isinstance(layer, ChannelAffine):
        _check_p(p)
        return diagonal_operator_norm(layer.scale)
    if isinstance(layer, Flatten):
        _check_p(p)
        return torch.ones((), dtype=torch.float64)  # a permutation
    raise UnsupportedLayerError(f"no operator norm for {layer.describe()}")


def spectral_norm_estimate(
    layer: AffineLayer, in_shape: Shape, *, iters: int = 100, tol: float = 1e-10, seed: int = 0
) -> float:
    """Power iteration on A^T A through the layer's own ``linear`` / ``linear_t`` (float64).

    Returns ||A v|| for the final unit vector v: never above the true spectral norm, and close
    to it once the iteration has converged (stops when the estimate changes by < ``tol`` relative).
    """
    if iters < 1:
        raise SpecError(f"power iteration needs at least one step, got {iters}")
    g = torch.Generator().manual_seed(seed)
    v = torch.randn((1, *in_shape), generator=g, dtype=torch.float64)
    v = v / v.norm()
    est = 0.0
    with torch.no_grad():
        for _ in range(iters):
            u = layer.linear(v)
            new = float(u.norm())
            if new == 0.0:
                return 0.0
            w = layer.linear_t(u, in_shape)
            nw = w.norm()
            if float(nw) == 0.0:
                return new
            v = w / nw
            if abs(new - est) <= tol * new:
                est = new
                break
            est = new
        return float(layer.linear(v).norm())


def conv_spectral_upper(
    weight: Tensor, in_hw: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int, int, int],
    *, depthwise: bool = False,
) -> float:
    """A guaranteed upper bound on a convolution's spectral norm, from its kernel alone.

    Write the conv as A = sum_t S_t (x) W_t over the taps t = (a, b): S_t is the 0/1 spatial
    map of tap t (at most one 1 per row and column) and W_t = weight[:, :, a, b]. Then

    * A = [S_1 (x) I, ..., S_T (x) I] . vstack_t(I (x) W_t), so ||A|| <= sqrt(r) ||vstack_t W_t||,
      with r the largest number of taps an output pixel sees (||sum_t S_t S_t^T|| = r);
    * A = hstack_t(I (x) W_t) . vstack_t(S_t (x) I), so ||A|| <= sqrt(c) ||hstack_t W_t||,
      with c the largest tap class, the most taps reaching one input pixel;
    * ||A|| <= sum_t ||W_t|| (each S_t has norm <= 1).

    The minimum of the three, +1e-9 relative for the rounding of the float64 SVDs.
    """
    w = weight.detach().to(torch.float64)
    if depthwise:  # (C, 1, kh, kw) -> the (C, C, kh, kw) kernel with diagonal taps
        c: float = w.shape[0]
        w = torch.diag_embed(w[:, 0].permute(1, 2, 0)).permute(2, 3, 0, 1)
    kernel = (int(w.shape[2]), int(w.shape[3]))
    rh, rw, ch, cw = conv_tap_masks(in_hw, kernel, stride, padding)
    r = float(rh.sum(1).max() * rw.sum(1).max())
    c = float(ch.sum(1).max() * cw.sum(1).max())
    taps = w.permute(2, 3, 0, 1).reshape(-1, w.shape[0], w.shape[1])  # (T, out, in)
    vstack = taps.reshape(-1, w.shape[1])  # (T * out, in)
    hstack = taps.permute(1, 0, 2).reshape(w.shape[0], -1)  # (out, T * in)
    two: Callable[[Tensor], float] = lambda m: float(torch.linalg.matrix_norm(m, ord=2))  # noqa: E731
    per_tap = float(torch.linalg.matrix_norm(taps, ord=2).sum())
    return min(math.sqrt(r) * two(vstack), math.sqrt(c) * two(hstack), per_tap) * (1 + 1e-9)


def spectral_norm_upper(layer: Layer, in_shape: Shape, l1: float, linf: float) -> float:
    """A guaranteed upper bound on ||layer||_2: exact for diagonal maps and permutations, the largest
    singular value (+1e-9 relative for rounding) of a Linear, for convolutions the smaller of
    :func:`conv_spectral_upper` and sqrt(||A||_1 ||A||_inf) (Riesz-Thorin)."""
    if isinstance(layer, (ChannelAffine, Flatten)):
        return l1
    if isinstance(layer, Linear):
        s = float(torch.linalg.matrix_norm(layer.weight.detach().to(torch.float64), ord=2))
        return min(s * (1 + 1e-9), math.sqrt(l1 * linf))
    if isinstance(layer, _ConvLike):
        k = layer._kernel(torch.zeros((1, in_shape[0], 1, 1), dtype=torch.float64))
        tap = conv_spectral_upper(k, (in_shape[1], in_shape[2]), layer.stride, layer.padding,
                                  depthwise=isinstance(layer, AvgPool2d))
        return min(tap, math.sqrt(l1 * linf))
    return math.sqrt(l1 * linf)


def layer_norm_bound(layer: Layer, in_shape: Shape, p: float | str) -> float:
    """||layer||_{p->p}: exact for p = 1 and inf, the guaranteed upper bound of :func:`spectral_norm_upper` for p = 2."""
    pv = parse_p(p)
    if pv != 2.0:
        return operator_norm(layer, in_shape, pv)
    return spectral_norm_upper(layer, in_shape, operator_norm(layer, in_shape, 1), operator_norm(layer, in_shape, math.inf))


@dataclass(frozen=True)
class LayerNorms:
    """Operator norms of one affine layer (input and output measured in the same p-norm)."""

    index: int  # graph node index (Network) or position among the normed modules (torch)
    name: str  # "node 3" or the module's qualified name ("0", "body.2")
    kind: str  # linear, conv2d, avgpool2d, channel_affine, batchnorm
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    l1: float  # exact: max column abs sum
    linf: float  # exact: max row abs sum
    l2: float  # spectral norm: exact for Linear / diagonal maps, a power-iteration estimate (<= the true value) for convolutions
    l2_upper: float  # a guaranteed upper bound on the spectral norm

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["in_shape"] = list(self.in_shape)
        d["out_shape"] = list(self.out_shape)
        return d

    def norm(self, p: float | str) -> float:
        """The recorded norm for p = 1, 2 (the guaranteed upper bound) or inf."""
        v = parse_p(p)
        return self.l1 if v == 1.0 else self.linf if math.isinf(v) else self.l2_upper


def layer_norms(layer: Layer, in_shape: Shape, *, index: int = 0, name: str = "", kind: str | None = None,
                power_iters: int = 100) -> LayerNorms:
    """All norms of one Network affine layer."""
    if not isinstance(layer, AffineLayer):
        raise UnsupportedLayerError(f"no operator norm for the non-linear layer {layer.describe()}")
    l1 = operator_norm(layer, in_shape, 1)
    linf = operator_norm(layer, in_shape, math.inf)
    if isinstance(layer, (ChannelAffine, Flatten)):
        l2 = l1
    elif isinstance(layer, Linear):
        l2 = float(torch.linalg.matrix_norm(layer.weight.detach().to(torch.float64), ord=2))
    else:
        l2 = spectral_norm_estimate(layer, in_shape, iters=power_iters)
    up = spectral_norm_upper(layer, in_shape, l1, linf)
    return LayerNorms(index, name or layer.describe(), kind or layer.kind, tuple(in_shape), tuple(layer.out_shape(in_shape)),
                      l1, linf, min(l2, up), up)


def network_norms(net: Network, *, power_iters: int = 100, include_flatten: bool = False) -> list[LayerNorms]:
    """One record per affine node of ``net.graph`` (residual bodies and shortcuts included).

    Flatten layers (permutations, every norm 1) are left out unless ``include_flatten``.
    """
    out = []
    for node in net.graph[1:]:
        op = node.op
        if not isinstance(op, AffineLayer) or (isinstance(op, Flatten) and not include_flatten):
            continue
        in_shape = net.graph[node.inputs[0]].shape
        out.append(layer_norms(op, in_shape, index=node.index, name=f"node {node.index}", power_iters=power_iters))
    return out


# --------------------------------------------------------------------------- torch modules


@dataclass(frozen=True)
class ModuleEntry:
    name: str
    module: nn.Module
    kind: str
    in_shape: tuple[int, ...]  # for convs: before any ZeroPad2d that feeds them
    out_shape: tuple[int, ...]
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # convs: own padding + a feeding ZeroPad2d's


_SHAPES: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], list[ModuleEntry]]]" = weakref.WeakKeyDictionary()


def _kind(m: nn.Module) -> str | None:
    from ..torch_modules import ChannelAffineModule

    if isinstance(m, nn.Conv2d):
        return "conv2d"
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return "batchnorm"
    if isinstance(m, ChannelAffineModule):
        return "channel_affine"
    return None


def module_entries(module: nn.Module, input_shape: Sequence[int] | None) -> list[ModuleEntry]:
    """The normed layers of a torch module, in forward order, with the input shape each one sees.

    ``input_shape=None`` is allowed for modules without Conv2d layers (module order, no shapes).

    Found by one forward pass of a zero batch of size 1 in eval mode without gradients
    (BatchNorm statistics are untouched; the module's train/eval flags are restored), cached
    per (module, input_shape). A ZeroPad2d whose output feeds a Conv2d directly is folded
    into that conv's padding (as :func:`verify.torch_modules.network_from_torch` does), so the
    norm is that of the composed map on the unpadded input.
    """
    if input_shape is None:
        out = []
        for name, m in module.named_modules():
            kind = _kind(m)
            if kind == "conv2d":
                raise ModelError("operator norms of a module with Conv2d layers need its input_shape=(C, H, W)")
            if kind is not None:
                out.append(ModuleEntry(name, m, kind, (), ()))
        return out
    shape = tuple(int(s) for s in input_shape)
    cached = _SHAPES.get(module, {}).get(shape)
    if cached is not None:
        return cached
    names = {m: n for n, m in module.named_modules()}
    entries: list[ModuleEntry] = []
    pad_out: dict[int, tuple[tuple[int, int, int, int], tuple[int, ...]]] = {}  # id(output) -> (pad, input shape)
    keep: list[Tensor] = []  # keeps the padded tensors alive so that their ids stay unique

    def hook(m: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        x = inputs[0]
        if isinstance(m, nn.ZeroPad2d):
            l, r, t, b = (int(v) for v in m.padding)
            if min(l, r, t, b) >= 0:
                pad_out[id(output)] = ((t, b, l, r), tuple(x.shape[1:]))
                keep.append(output)
            return
        kind = _kind(m)
        if kind is None:
            return
        in_shape = tuple(int(s) for s in x.shape[1:])
        pad = (0, 0, 0, 0)
        if kind == "conv2d":
            _check_conv(m)  # type: ignore[arg-type]
            ph, pw = m.padding  # type: ignore[misc]
            pad = (int(ph), int(ph), int(pw), int(pw))
            fed = pad_out.get(id(x))
            if fed is not None:
                pad = tuple(a + b for a, b in zip(pad, fed[0]))  # type: ignore[assignment]
                in_shape = fed[1]
        entries.append(ModuleEntry(names.get(m, "?"), m, kind, in_shape, tuple(int(s) for s in output.shape[1:]), pad))

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    flags = {m: m.training for m in module.modules()}
    try:
        module.eval()
        p0 = next(iter(module.parameters()), None)
        dtype = p0.dtype if p0 is not None and p0.is_floating_point() else torch.float32
        device = p0.device if p0 is not None else torch.device("cpu")
        with torch.no_grad():
            module(torch.zeros((1, *shape), dtype=dtype, device=device))
    except VerifyError:
        raise
    except RuntimeError as e:
        raise ModelError(f"the module does not accept inputs of shape {shape}: {str(e).splitlines()[0]}") from None
    finally:
        for h in handles:
            h.remove()
        for m, f in flags.items():
            m.train(f)
    seen: set[int] = set()
    unique = []
    for entry in entries:  # a module called twice (shared weights) is normed once, at its first use
        if id(entry.module) not in seen:
            seen.add(id(entry.module))
            unique.append(entry)
    _SHAPES.setdefault(module, {})[shape] = unique
    return unique


def _check_conv(m: nn.Conv2d) -> None:
    if m.groups != 1 or tuple(m.dilation) != (1, 1) or m.padding_mode != "zeros":
        raise UnsupportedLayerError("operator norms support plain Conv2d (groups=1, dilation=1, zero padding)")
    if isinstance(m.padding, str):
        raise UnsupportedLayerError("Conv2d with string padding is not supported; give explicit padding")


def entry_norm(e: ModuleEntry, p: float | str) -> Tensor:
    """The exact p-norm (1 or inf) of one module, differentiable in its live parameters."""
    m = e.module  # of the type its kind names (_kind)
    if e.kind == "conv2d":
        conv = cast(nn.Conv2d, m)
        return conv_operator_norm(conv.weight, (e.in_shape[1], e.in_shape[2]), tuple(conv.stride), e.padding, p)  # type: ignore[arg-type]
    if e.kind == "linear":
        return linear_operator_norm(cast(nn.Linear, m).weight, p)
    _check_p(p)
    if e.kind == "batchnorm":
        return diagonal_operator_norm(batchnorm_scale(cast(nn.modules.batchnorm._BatchNorm, m)))
    return diagonal_operator_norm(cast("ChannelAffineModule", m).scale)


def _entry_layer(e: ModuleEntry) -> Layer:
    """A detached verify layer with the same linear map (for power iteration and the spectral bound)."""
    m = e.module  # of the type its kind names (_kind)
    if e.kind == "conv2d":
        conv = cast(nn.Conv2d, m)
        return Conv2d(conv.weight.detach(), None, tuple(conv.stride), e.padding)
    if e.kind == "linear":
        return Linear(cast(nn.Linear, m).weight.detach())
    if e.kind == "batchnorm":
        scale = batchnorm_scale(cast(nn.modules.batchnorm._BatchNorm, m)).detach()
    else:
        scale = cast("ChannelAffineModule", m).scale.detach()
    return ChannelAffine(scale, torch.zeros_like(scale))


def module_norms(module: nn.Module, input_shape: Sequence[int], *, power_iters: int = 100) -> list[LayerNorms]:
    """Per-layer records of a torch module (Conv2d, Linear, BatchNorm, ChannelAffineModule), in forward order."""
    out = []
    for i, e in enumerate(module_entries(module, input_shape)):
        layer = _entry_layer(e)
        r = layer_norms(layer, e.in_shape, index=i, name=e.name, kind=e.kind, power_iters=power_iters)
        out.append(r)
    return out


# --------------------------------------------------------------------------- plots


def plot_norms(records: Sequence[LayerNorms], path: str, *, title: str = "operator norms per layer") -> None:
    """Grouped bars (log scale): L1, Linf, spectral estimate per layer; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import write_atomic_with

    if not records:
        raise SpecError("no layers to plot")
    x = np.arange(len(records))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(records) + 2), 4))
    for k, (key, label) in enumerate((("l1", "L1 (exact)"), ("linf", "Linf (exact)"), ("l2", "L2 (power iteration)"))):
        ax.bar(x + (k - 1) * 0.27, [max(getattr(r, key), 1e-12) for r in records], 0.27, label=label)
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{r.name}\n{r.kind}" for r in records], fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("operator norm")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def plot_norm_history(history: Sequence[Sequence[LayerNorms]], path: str, *, p: float | str = "inf",
                      title: str | None = None) -> None:
    """One line per layer: its p-norm over the recorded snapshots (e.g. one per epoch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import write_atomic_with

    if not history or not history[0]:
        raise SpecError("no norm records to plot")
    fig, ax = plt.subplots(figsize=(7, 4))
    for j, first in enumerate(history[0]):
        ys = [snap[j].norm(p) for snap in history if j < len(snap)]
        ax.plot(range(len(ys)), ys, marker="o", ms=3, label=f"{first.name} ({first.kind})")
    ax.set_yscale("log")
    ax.set_xlabel("record (e.g. epoch)")
    pv = parse_p(p)
    ax.set_ylabel(f"L{p_name(pv)} operator norm")
    ax.set_title(title or "operator norms during training")
    ax.legend(fontsize=7)
    fig.tight_layout()
    write_atomic_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
