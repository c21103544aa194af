"""The Network: the one representation of a ReLU network in relu-verify.

Loaders (``verify.formats``) build it, bounds, attacks and the MIP read it, and
training exports it. A Network is an ordered tuple of layers with a known input
shape and input range. Tensors are always laid out as PyTorch does (N, C, H, W);
formats that store NHWC data (the MMR and MIPVerify ``.mat`` files) say so only
through the order of their :class:`Flatten` layer.

Every layer is either *affine* (Linear, Conv2d, ChannelAffine, AvgPool2d,
Flatten) or one of the non-linear ReLU / MaxPool2d; residual connections are a
:class:`Residual` layer holding a body and an (affine or empty) shortcut.

Consumers that need a flat view (bound propagation, the MIP) use
:attr:`Network.graph`: a topologically ordered tuple of :class:`Node` with
residuals turned into :class:`Add` nodes. The forward pass itself runs on that
graph, so there is exactly one definition of what the network computes.

Parameters are stored in float64 (an exact copy of float32 weights); each layer
casts them lazily, with a cache, to the dtype of its input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Literal, Protocol, Sequence, TypeVar, Union, overload

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ModelError

Shape = tuple[int, ...]
FlattenOrder = Literal["NCHW", "NHWC"]


def _as_f64(value: Tensor | np.ndarray | Sequence[float], name: str) -> Tensor:
    if isinstance(value, Tensor):
        t = value.detach().to(torch.float64).clone()  # stays on its device (training on a GPU)
    else:
        t = torch.as_tensor(np.asarray(value, dtype=np.float64), device="cpu").clone()
    if not torch.isfinite(t).all():
        bad = "NaN" if torch.isnan(t).any() else "infinite"
        raise ModelError(f"{name} contains {bad} values")
    return t


class Layer:
    """Base class. Subclasses are small: a forward rule and a shape rule."""

    kind: str = "layer"
    affine: bool = False

    def __init__(self) -> None:
        # (name, dtype, device) -> (the parameter's version when cast, the cast)
        self._cast: dict[tuple[str, torch.dtype, torch.device], tuple[int, Tensor]] = {}

    def param(self, name: str, like: Tensor) -> Tensor:
        """The float64 parameter ``name`` cast to ``like``'s dtype and device (cached)."""
        src: Tensor = getattr(self, name)
        if src.requires_grad:
            # live nn.Parameters shared with a training module (torch_modules.network_from_torch(share_parameters=True)):
            # no cache, so autograd reaches the parameter and optimizer updates are seen at once
            return src.to(dtype=like.dtype, device=like.device)
        # keyed by the tensor's version too: an in-place change of the parameter (net.layers[0].bias -= 2)
        # must not leave a stale float32 copy deciding a certificate
        key = (name, like.dtype, like.device)
        hit = self._cast.get(key)
        if hit is None or hit[0] != src._version:
            hit = (src._version, src.to(dtype=like.dtype, device=like.device))
            self._cast[key] = hit
        return hit[1]

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def out_shape(self, in_shape: Shape) -> Shape:
        return in_shape

    def num_params(self) -> int:
        return 0

    def describe(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return self.describe()


class AffineLayer(Layer):
    """An affine map y = L(x) + b. Bound methods use only the three rules below."""

    affine = True

    def linear(self, x: Tensor) -> Tensor:
        """L(x): the linear part, without the offset."""
        raise NotImplementedError

    def linear_t(self, y: Tensor, in_shape: Shape) -> Tensor:
        """L^T(y): the transpose, mapping a batch of output-shaped tensors to input shape."""
        raise NotImplementedError

    def abs_linear(self, x: Tensor) -> Tensor:
        """|L|(x): the linear part with every coefficient replaced by its absolute value."""
        raise NotImplementedError

    def offset(self, in_shape: Shape, like: Tensor) -> Tensor:
        """b, broadcast to the output shape (no batch dimension)."""
        zero = torch.zeros((1, *in_shape), dtype=like.dtype, device=like.device)
        return self.forward(zero)[0]

    def row_norms(self, in_shape: Shape, q: float, like: Tensor) -> Tensor:
        """||row k of L||_q for every output k, shaped like the output (no batch dimension), or an
        upper bound on it. Here from the sparse matrix (constant: no gradient); layers override it."""
        m = self.matrix(in_shape)
        if math.isinf(q):
            v = abs(m).max(axis=1).toarray().reshape(-1)
        else:
            v = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).reshape(-1)) if q == 2.0 else np.asarray(abs(m).sum(axis=1)).reshape(-1)
        out = self.out_shape(in_shape)
        return torch.as_tensor(v, dtype=like.dtype, device=like.device).reshape(out if isinstance(out, tuple) else (out,))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x) + self.offset(tuple(x.shape[1:]), x)

    def matrix(self, in_shape: Shape) -> sp.csr_matrix:
        """The linear part as a float64 sparse matrix (out_dim, in_dim), rows in C order."""
        # keyed by the parameters' identity and version: an in-place change must not serve a stale matrix
        params = tuple((id(v), v._version) for v in vars(self).values() if isinstance(v, Tensor))
        key = ("__matrix__", in_shape, params)
        cached = getattr(self, "_matrix_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        n_in = int(np.prod(in_shape))
        blocks = []
        chunk = max(1, min(n_in, 2_000_000 // max(1, n_in)))
        for start in range(0, n_in, chunk):
            stop = min(n_in, start + chunk)
            eye = torch.zeros((stop - start, n_in), dtype=torch.float64)
            eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            cols = self.linear(eye.reshape(stop - start, *in_shape)).reshape(stop - start, -1)
            blocks.append(sp.csr_matrix(cols.numpy()).T)
        m = sp.hstack(blocks).tocsr()
        m.eliminate_zeros()
        self._matrix_cache = (key, m)
        return m


# --------------------------------------------------------------------------- affine layers


class Linear(AffineLayer):
    kind = "linear"

    def __init__(self, weight: Tensor | np.ndarray, bias: Tensor | np.ndarray | None = None) -> None:
        super().__init__()
        self.weight = _as_f64(weight, "Linear weight")
        if self.weight.ndim != 2:
            raise ModelError(f"Linear weight must be 2-D (out, in), got shape {tuple(self.weight.shape)}")
        out_dim = self.weight.shape[0]
        self.bias = _as_f64(bias, "Linear bias").reshape(-1) if bias is not None else torch.zeros(out_dim, dtype=torch.float64, device=self.weight.device)
        if self.bias.numel() != out_dim:
            raise ModelError(f"Linear bias has {self.bias.numel()} entries, weight has {out_dim} outputs")

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def _flat(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features or x.ndim != 2:
            x = x.reshape(x.shape[0], -1)
        return x

    def linear(self, x: Tensor) -> Tensor:
        return self._flat(x) @ self.param("weight", x).T

    def forward(self, x: Tensor) -> Tensor:
        return torch.addmm(self.param("bias", x), self._flat(x), self.param("weight", x).T)

    def linear_t(self, y: Tensor, in_shape: Shape) -> Tensor:
        return (y @ self.param("weight", y)).reshape(y.shape[0], *in_shape)

    def abs_linear(self, x: Tensor) -> Tensor:
        return self._flat(x) @ self.param("weight", x).abs().T

    def row_norms(self, in_shape: Shape, q: float, like: Tensor) -> Tensor:
        norms: Tensor = torch.linalg.vector_norm(self.param("weight", like), ord=q, dim=1)
        return norms

    def offset(self, in_shape: Shape, like: Tensor) -> Tensor:
        return self.param("bias", like)

    def out_shape(self, in_shape: Shape) -> Shape:
        n_in = int(np.prod(in_shape))
        if len(in_shape) != 1 or n_in != self.in_features:
            raise ModelError(
                f"Linear layer expects {self.in_features} inputs, gets shape {in_shape}"
                + (" (add a Flatten layer before it)" if len(in_shape) > 1 and n_in == self.in_features else "")
            )
        return (self.out_features,)

    def matrix(self, in_shape: Shape) -> sp.csr_matrix:
        return sp.csr_matrix(self.weight.detach().to(torch.float64).numpy())

    def num_params(self) -> int:
        return self.weight.numel() + self.bias.numel()

    def describe(self) -> str:
        return f"Linear({self.in_features} -> {self.out_features})"


def as_batch(x: Tensor | np.ndarray, dtype: torch.dtype | None = None) -> Tensor:
    """An input batch as a floating tensor: ``dtype`` if given, else x's (float32 for integers and arrays of them)."""
    if not isinstance(x, Tensor):
        x = torch.as_tensor(np.asarray(x), device="cpu")
    if dtype is not None:
        return x.to(dtype)
    return x if x.is_floating_point() else x.to(torch.float32)


def same_padding(in_hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int, int, int]:
    """TensorFlow 'SAME' padding (top, bottom, left, right): the extra pixel goes bottom/right."""
    pads = []
    for n, k, s in zip(in_hw, kernel, stride):
        out = math.ceil(n / s)
        total = max((out - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return (pads[0][0], pads[0][1], pads[1][0], pads[1][1])


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise ModelError(f"expected an int or a pair, got {v!r}")
    return (t[0], t[1])


def _padding4(p: int | Sequence[int]) -> tuple[int, int, int, int]:
    if isinstance(p, int):
        return (p, p, p, p)
    t = tuple(int(a) for a in p)
    if len(t) == 2:
        return (t[0], t[0], t[1], t[1])
    if len(t) == 4:
        return (t[0], t[1], t[2], t[3])
    raise ModelError(f"padding must be an int, (ph, pw) or (top, bottom, left, right), got {p!r}")


class _ConvLike(AffineLayer):
    """Shared convolution arithmetic for Conv2d and AvgPool2d (a depthwise conv)."""

    stride: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, bottom, left, right
    depthwise: bool = False  # AvgPool2d: one kernel per channel

    def _kernel(self, like: Tensor) -> Tensor:
        raise NotImplementedError

    def _pad(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        t, b, l, r = self.padding
        if t == b and l == r:
            return x, (t, l)
        return F.pad(x, (l, r, t, b)), (0, 0)

    def linear(self, x: Tensor) -> Tensor:
        xp, pad = self._pad(x)
        return F.conv2d(xp, self._kernel(x), None, self.stride, pad, 1, self._groups(x))

    def _groups(self, t: Tensor) -> int:
        return t.shape[1] if self.depthwise else 1

    def abs_linear(self, x: Tensor) -> Tensor:
        xp, pad = self._pad(x)
        return F.conv2d(xp, self._kernel(x).abs(), None, self.stride, pad, 1, self._groups(x))

    def row_norms(self, in_shape: Shape, q: float, like: Tensor) -> Tensor:
        """q = 2: exact, the squared kernel over the taps inside the image; otherwise the whole
        kernel's norm per output channel (an upper bound at the border, where taps fall on padding)."""
        k = self._kernel(like)
        out = self.out_shape(in_shape)
        if q == 2.0:
            ones = torch.ones((1, *in_shape), dtype=like.dtype, device=like.device)
            xp, pad = self._pad(ones)
            exact: Tensor = F.conv2d(xp, k * k, None, self.stride, pad, 1, self._groups(ones))[0].sqrt()
            return exact
        per_kernel: Tensor = torch.linalg.vector_norm(k.flatten(1), ord=q, dim=1)  # (C_out,) or (C,) depthwise
        return per_kernel[:, None, None].expand(out)

    def linear_t(self, y: Tensor, in_shape: Shape) -> Tensor:
        _, h, w = in_shape
        t, b, l, r = self.padding
        k = self._kernel(y)
        kh, kw = k.shape[-2:]
        hp, wp = h + t + b, w + l + r
        ho, wo = y.shape[-2:]
        op = (hp - ((ho - 1) * self.stride[0] + kh), wp - ((wo - 1) * self.stride[1] + kw))
        full = F.conv_transpose2d(y, k, None, self.stride, 0, op, self._groups(y))
        return full[:, :, t : t + h, l : l + w]

    def linear_t_window(self, y: Tensor) -> Tensor:
        """The transpose on a window of outputs: (N, C_out, h, w) -> (N, C_in, (h-1)s+kh, (w-1)s+kw).

        No padding and no cropping: the result covers exactly the inputs those outputs read,
        in the padded input's coordinates (receptive-field bounds, verify.bounds.local).
        """
        return F.conv_transpose2d(y, self._kernel(y), None, self.stride, 0, 0, self._groups(y))

    def out_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) != 3:
            raise ModelError(f"{type(self).__name__} expects a (C, H, W) input, gets shape {in_shape}")
        c, h, w = in_shape
        kh, kw = self.kernel_size
        t, b, l, r = self.padding
        ho = (h + t + b - kh) // self.stride[0] + 1
        wo = (w + l + r - kw) // self.stride[1] + 1
        if ho <= 0 or wo <= 0:
            raise ModelError(f"{self.describe()} does not fit input shape {in_shape}")
        return (self._out_channels(c), ho, wo)

    def _out_channels(self, c: int) -> int:
        raise NotImplementedError

    @property
    def kernel_size(self) -> tuple[int, int]:
        raise NotImplementedError


class Conv2d(_ConvLike):
    kind = "conv2d"

    def __init__(
        self,
        weight: Tensor | np.ndarray,
        bias: Tensor | np.ndarray | None = None,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
    ) -> None:
        """``weight`` is OIHW (PyTorch). ``padding`` is an int, (ph, pw) or (top, bottom, left, right)."""
        super().__init__()
        self.weight = _as_f64(weight, "Conv2d weight")
        if self.weight.ndim != 4:
            raise ModelError(f"Conv2d weight must be 4-D (out, in, kh, kw), got shape {tuple(self.weight.shape)}")
        o = self.weight.shape[0]
        self.bias = _as_f64(bias, "Conv2d bias").reshape(-1) if bias is not None else torch.zeros(o, dtype=torch.float64, device=self.weight.device)
        if self.bias.numel() != o:
            raise ModelError(f"Conv2d bias has {self.bias.numel()} entries, weight has {o} output channels")
        self.stride = _pair(stride)
        self.padding = _padding4(padding)

    def _kernel(self, like: Tensor) -> Tensor:
        return self.param("weight", like)

    @property
    def kernel_size(self) -> tuple[int, int]:
        return (int(self.weight.shape[2]), int(self.weight.shape[3]))

    def _out_channels(self, c: int) -> int:
        if c != self.weight.shape[1]:
            raise ModelError(f"{self.describe()} expects {self.weight.shape[1]} input channels, gets {c}")
        return int(self.weight.shape[0])

    def offset(self, in_shape: Shape, like: Tensor) -> Tensor:
        return self.param("bias", like)[:, None, None].expand(self.out_shape(in_shape))

    def forward(self, x: Tensor) -> Tensor:
        xp, pad = self._pad(x)
        return F.conv2d(xp, self._kernel(x), self.param("bias", x), self.stride, pad)

    def num_params(self) -> int:
        return self.weight.numel() + self.bias.numel()

    def describe(self) -> str:
        o, i, kh, kw = self.weight.shape
        return f"Conv2d({i} -> {o}, kernel {kh}x{kw}, stride {self.stride[0]}, padding {self.padding})"


class AvgPool2d(_ConvLike):
    """Average pooling; zero padding counts in the average (count_include_pad=True)."""

    kind = "avgpool2d"
    depthwise = True

    def __init__(self, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None, padding: int | Sequence[int] = 0):
        super().__init__()
        self.kernel = _pair(kernel_size)
        self.stride = _pair(stride) if stride is not None else self.kernel
        self.padding = _padding4(padding)

    @property
    def kernel_size(self) -> tuple[int, int]:
        return self.kernel

    def _kernel(self, like: Tensor) -> Tensor:
        c = like.shape[1]
        kh, kw = self.kernel
        return torch.full((c, 1, kh, kw), 1.0 / (kh * kw), dtype=like.dtype, device=like.device)

    def abs_linear(self, x: Tensor) -> Tensor:
        return self.linear(x)

    def offset(self, in_shape: Shape, like: Tensor) -> Tensor:
        return torch.zeros(self.out_shape(in_shape), dtype=like.dtype, device=like.device)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)

    def _out_channels(self, c: int) -> int:
        return c

    def describe(self) -> str:
        return f"AvgPool2d(kernel {self.kernel}, stride {self.stride}, padding {self.padding})"


class ChannelAffine(AffineLayer):
    """Per-channel y = scale * x + shift: input normalisation and folded BatchNorm.

    The channel axis is axis 1 (C of NCHW, or the feature axis of a vector).
    """

    kind = "channel_affine"

    def __init__(self, scale: Tensor | np.ndarray, shift: Tensor | np.ndarray) -> None:
        super().__init__()
        self.scale = _as_f64(scale, "ChannelAffine scale").reshape(-1)
        self.shift = _as_f64(shift, "ChannelAffine shift").reshape(-1)
        if self.scale.shape != self.shift.shape:
            raise ModelError("ChannelAffine scale and shift differ in length")

    @classmethod
    def normalize(cls, mean: Sequence[float] | Tensor | np.ndarray,
                  std: Sequence[float] | Tensor | np.ndarray) -> "ChannelAffine":
        """(x - mean) / std, as in torchvision's Normalize and MIPVerify's Normalize."""
        m = _as_f64(mean, "Normalize mean").reshape(-1)
        s = _as_f64(std, "Normalize std").reshape(-1)
        if (s <= 0).any():
            raise ModelError("Normalize std must be positive")
        return cls(1.0 / s, -m / s)

    @classmethod
    def batchnorm(cls, mean: Tensor | np.ndarray, var: Tensor | np.ndarray, weight: Tensor | np.ndarray | None,
                  bias: Tensor | np.ndarray | None, eps: float) -> "ChannelAffine":
        """BatchNorm in eval mode, folded: gamma * (x - mean) / sqrt(var + eps) + beta."""
        m = _as_f64(mean, "BatchNorm running_mean")
        v = _as_f64(var, "BatchNorm running_var")
        if (v + eps <= 0).any():
            raise ModelError("BatchNorm running_var + eps must be positive")
        g = _as_f64(weight, "BatchNorm weight") if weight is not None else torch.ones_like(m)
        b = _as_f64(bias, "BatchNorm bias") if bias is not None else torch.zeros_like(m)
        scale = g / torch.sqrt(v + eps)
        return cls(scale, b - m * scale)

    def as_normalize(self) -> tuple[Tensor, Tensor]:
        """(mean, std) with the same map, for formats that only know Normalize."""
        if (self.scale <= 0).any():
            raise ModelError("this ChannelAffine has non-positive scales and cannot be written as (x - mean) / std")
        std = 1.0 / self.scale
        return -self.shift * std, std

    def _view(self, name: str, x: Tensor) -> Tensor:
        p = self.param(name, x)
        return p.reshape((1, -1) + (1,) * (x.ndim - 2))

    def linear(self, x: Tensor) -> Tensor:
        return x * self._view("scale", x)

    def abs_linear(self, x: Tensor) -> Tensor:
        return x * self._view("scale", x).abs()

    def linear_t(self, y: Tensor, in_shape: Shape) -> Tensor:
        return y * self._view("scale", y)

    def forward(self, x: Tensor) -> Tensor:
        return x * self._view("scale", x) + self._view("shift", x)

    def offset(self, in_shape: Shape, like: Tensor) -> Tensor:
        # shaped from in_shape, not like.ndim: callers pass any tensor as a dtype/device template
        p = self.param("shift", like)
        return p.reshape((-1,) + (1,) * (len(in_shape) - 1)).expand(in_shape)

    def out_shape(self, in_shape: Shape) -> Shape:
        c = self.scale.numel()
        if len(in_shape) < 1 or in_shape[0] != c:
            raise ModelError(f"ChannelAffine has {c} channels, input shape is {in_shape}")
        return in_shape

    def num_params(self) -> int:
        return 2 * self.scale.numel()

    def describe(self) -> str:
        return f"ChannelAffine({self.scale.numel()} channels)"


class Flatten(AffineLayer):
    """Flatten (C, H, W) to a vector, in PyTorch order (NCHW) or TensorFlow order (NHWC)."""

    kind = "flatten"

    def __init__(self, order: FlattenOrder = "NCHW") -> None:
        super().__init__()
        if order not in ("NCHW", "NHWC"):
            raise ModelError(f"Flatten order must be 'NCHW' or 'NHWC', got {order!r}")
        self.order: FlattenOrder = order

    def linear(self, x: Tensor) -> Tensor:
        if self.order == "NHWC" and x.ndim == 4:
            x = x.permute(0, 2, 3, 1)
        return x.reshape(x.shape[0], -1)

    abs_linear = linear
    forward = linear

    def linear_t(self, y: Tensor, in_shape: Shape) -> Tensor:
        if self.order == "NHWC" and len(in_shape) == 3:
            c, h, w = in_shape
            return y.reshape(y.shape[0], h, w, c).permute(0, 3, 1, 2)
        return y.reshape(y.shape[0], *in_shape)

    def offset(self, in_shape: Shape, like: Tensor) -> Tensor:
        return torch.zeros(int(np.prod(in_shape)), dtype=like.dtype, device=like.device)

    def out_shape(self, in_shape: Shape) -> Shape:
        return (int(np.prod(in_shape)),)

    def describe(self) -> str:
        return f"Flatten({self.order})"


# --------------------------------------------------------------------------- non-linear layers


class ReLU(Layer):
    kind = "relu"

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x)


class MaxPool2d(Layer):
    """Max pooling. Forward and interval bounds only; other methods reject it."""

    kind = "maxpool2d"

    def __init__(self, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None, padding: int | Sequence[int] = 0):
        super().__init__()
        self.kernel = _pair(kernel_size)
        self.stride = _pair(stride) if stride is not None else self.kernel
        self.padding = _pair(padding)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.kernel, self.stride, self.padding)

    def out_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) != 3:
            raise ModelError(f"MaxPool2d expects a (C, H, W) input, gets shape {in_shape}")
        c, h, w = in_shape
        ho = (h + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1
        return (c, ho, wo)

    def describe(self) -> str:
        return f"MaxPool2d(kernel {self.kernel}, stride {self.stride}, padding {self.padding})"


class Residual(Layer):
    """y = shortcut(x) + body(x); an empty shortcut is the identity (ResNet, SSP blocks)."""

    kind = "residual"

    def __init__(self, body: Sequence[Layer], shortcut: Sequence[Layer] = ()) -> None:
        super().__init__()
        self.body = tuple(body)
        self.shortcut = tuple(shortcut)
        if not self.body:
            raise ModelError("a Residual block needs a non-empty body")

    def out_shape(self, in_shape: Shape) -> Shape:
        a = _chain_shape(self.body, in_shape)
        b = _chain_shape(self.shortcut, in_shape)
        if a != b:
            raise ModelError(f"Residual body gives shape {a}, shortcut gives {b}")
        return a

    def num_params(self) -> int:
        return sum(l.num_params() for l in self.body + self.shortcut)

    def describe(self) -> str:
        inner = ", ".join(l.describe() for l in self.body)
        sc = ", ".join(l.describe() for l in self.shortcut) or "identity"
        return f"Residual(body=[{inner}], shortcut=[{sc}])"


def _chain_shape(layers: Iterable[Layer], shape: Shape) -> Shape:
    for layer in layers:
        shape = layer.out_shape(shape)
    return shape


# --------------------------------------------------------------------------- the graph view


class Add:
    """Graph node operation: the sum of its inputs (a residual join)."""

    kind = "add"

    def __repr__(self) -> str:
        return "Add"


Op = Union[Layer, Add, None]
_L = TypeVar("_L", bound=Layer)


@dataclass(frozen=True)
class Node:
    """One node of the flat graph. ``op`` is None for the input node."""

    index: int
    op: Op
    inputs: tuple[int, ...]
    shape: Shape

    @property
    def is_relu(self) -> bool:
        return isinstance(self.op, ReLU)

    def op_as(self, kind: type[_L]) -> _L:
        """The op as a ``kind``, for code that already knows the node's layer type (a plan built
        by isinstance checks on the graph); TypeError if it is not one."""
        op = self.op
        if not isinstance(op, kind):
            raise TypeError(f"node {self.index} is {op!r}, not a {kind.__name__}")
        return op


def _build_graph(layers: Sequence[Layer], input_shape: Shape) -> tuple[Node, ...]:
    nodes: list[Node] = [Node(0, None, (), input_shape)]

    def emit(op: Op, inputs: tuple[int, ...], shape: Shape) -> int:
        nodes.append(Node(len(nodes), op, inputs, shape))
        return len(nodes) - 1

    def chain(seq: Sequence[Layer], src: int) -> int:
        for layer in seq:
            shape = nodes[src].shape
            if isinstance(layer, Residual):
                out_shape = layer.out_shape(shape)
                a = chain(layer.body, src)
                b = chain(layer.shortcut, src)
                src = emit(Add(), (a, b), out_shape)
            else:
                src = emit(layer, (src,), layer.out_shape(shape))
        return src

    chain(layers, 0)
    return tuple(nodes)


# --------------------------------------------------------------------------- the Network


class Classifier(Protocol):
    """What attacks, :func:`verify.spec.margins_f64` and ``verify attack`` use of a model: a
    :class:`Network` or an attack-only :class:`verify.exported.ExportedClassifier` (typing only)."""

    @property
    def input_shape(self) -> Shape: ...

    @property
    def input_range(self) -> tuple[float, float]: ...

    @property
    def n_classes(self) -> int: ...

    @property
    def name(self) -> str: ...

    def forward(self, x: Tensor | np.ndarray, dtype: torch.dtype | None = None) -> Tensor: ...

    def check_input(self, x: Tensor) -> None: ...

    def predict(self, x: Tensor | np.ndarray, batch_size: int = 1000) -> Tensor: ...


@dataclass(frozen=True, eq=False)
class Network:
    """An ordered tuple of layers with an input shape (C, H, W) or (d,) and an input range."""

    layers: tuple[Layer, ...]
    input_shape: Shape
    input_range: tuple[float, float] = (0.0, 1.0)
    name: str = "network"
    metadata: dict[str, Any] = field(default_factory=dict)
    graph: tuple[Node, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        lo, hi = (float(v) for v in self.input_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ModelError(f"input range must be finite with lo < hi, got ({lo}, {hi})")
        object.__setattr__(self, "input_range", (lo, hi))
        if not self.layers:
            raise ModelError("a network needs at least one layer")
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise ModelError(f"layer {i} is not a verify.network.Layer: {layer!r}")
        object.__setattr__(self, "graph", _build_graph(self.layers, self.input_shape))
        if len(self.output_shape) != 1:
            raise ModelError(f"the network must end in a vector of logits, its output shape is {self.output_shape}")

    # ---- structure
    @property
    def output_shape(self) -> Shape:
        return self.graph[-1].shape

    @property
    def n_classes(self) -> int:
        return self.output_shape[0]

    @property
    def input_dim(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def relu_nodes(self) -> tuple[Node, ...]:
        return tuple(n for n in self.graph if n.is_relu)

    def num_relus(self) -> int:
        return sum(int(np.prod(n.shape)) for n in self.relu_nodes)

    def num_params(self) -> int:
        return sum(layer.num_params() for layer in self.layers)

    def walk(self) -> Iterator[Layer]:
        """Every layer, depth first, residual bodies and shortcuts included."""

        def rec(seq: Sequence[Layer]) -> Iterator[Layer]:
            for layer in seq:
                yield layer
                if isinstance(layer, Residual):
                    yield from rec(layer.body)
                    yield from rec(layer.shortcut)

        return rec(self.layers)

    # ---- computation
    def check_input(self: Classifier, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.input_shape:
            from .errors import DataError

            raise DataError(f"inputs have shape {tuple(x.shape[1:])}, the model expects {self.input_shape}")

    @overload
    def forward(self, x: Tensor | np.ndarray, dtype: torch.dtype | None = None,
                all_nodes: Literal[False] = False) -> Tensor: ...

    @overload
    def forward(self, x: Tensor | np.ndarray, dtype: torch.dtype | None = None, *,
                all_nodes: Literal[True]) -> list[Tensor]: ...

    def forward(self, x: Tensor | np.ndarray, dtype: torch.dtype | None = None,
                all_nodes: bool = False) -> Tensor | list[Tensor]:
        """Logits for a batch (N, *input_shape). ``dtype`` defaults to x's (float32 for arrays)."""
        x = as_batch(x, dtype)
        self.check_input(x)
        values: list[Tensor] = [x]
        for node in self.graph[1:]:
            if isinstance(node.op, Add):
                v = values[node.inputs[0]]
                for j in node.inputs[1:]:
                    v = v + values[j]
            else:
                v = node.op.forward(values[node.inputs[0]])  # type: ignore[union-attr]
            values.append(v)
        return values if all_nodes else values[-1]

    __call__ = forward

    def predict(self: Classifier, x: Tensor | np.ndarray, batch_size: int = 1000) -> Tensor:
        """Predicted labels, in batches, without gradients."""
        with torch.no_grad():
            outs = [self.forward(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
        return torch.cat(outs) if outs else torch.zeros(0, dtype=torch.long)

    def ancestors(self, k: int) -> set[int]:
        """Node k and every node it depends on (indices into ``graph``)."""
        seen: set[int] = set()
        todo = [k]
        while todo:
            i = todo.pop()
            if i in seen:
                continue
            seen.add(i)
            todo.extend(self.graph[i].inputs)
        return seen

    def summary(self) -> str:
        lines = [f"{self.name}: input {self.input_shape} in [{self.input_range[0]:g}, {self.input_range[1]:g}]"]
        shape = self.input_shape
        for i, layer in enumerate(self.layers):
            shape = layer.out_shape(shape)
            lines.append(f"  {i:2d}  {layer.describe():<60s} -> {shape}")
        lines.append(f"parameters: {self.num_params()}   ReLUs: {self.num_relus()}   classes: {self.n_classes}")
        return "\n".join(lines)
