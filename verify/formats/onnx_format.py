"""``.onnx``: export and import written directly on the ``onnx`` package.

Export (opset 13): input ``input`` of shape [batch, *input_shape] (dynamic batch), output
``output`` [batch, classes]. Linear -> Gemm (transB=1); Conv2d -> Conv with explicit pads
(asymmetric allowed); ReLU -> Relu; Flatten NCHW -> Flatten(axis=1), NHWC -> Transpose(0,2,3,1)
+ Flatten; ChannelAffine -> Mul + Add; AvgPool2d -> AveragePool (count_include_pad=1); MaxPool2d
-> MaxPool; Residual -> both branches and an Add. ``metadata_props`` hold input_range (JSON),
name and metadata (JSON).

Import: Gemm, MatMul (+ Add of a constant bias; on (1, ..., 1, d) tensors too), Conv, Relu, Flatten,
Reshape to [batch, -1], any Reshape of the graph input itself (e.g. [N, 784] -> [N, 1, 28, 28]: the
network then takes the reshaped input; the C-order data, and so VNNLIB's X_i, is the same),
Transpose(0,2,3,1) right before a flatten, Add / Sub / Mul / Div by per-channel constants
(normalisation), BatchNormalization, AveragePool, MaxPool, Add of two branches (a residual),
Identity, Dropout, Constant, and the Shape / Gather / Unsqueeze / Concat / Cast arithmetic that
PyTorch's exporter emits for ``x.view(x.size(0), -1)``. Constants come from initializers or
Constant nodes. Anything else is a ModelError naming the operator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from ..network import AvgPool2d, ChannelAffine, Conv2d, Flatten, Layer, Linear, MaxPool2d, Network, ReLU, Residual
from ._common import PathLike, cannot_read, check_readable, fail, layer_errors, write_atomic_with

OPSET = 13
IR_VERSION = 8


# --------------------------------------------------------------------------- export


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, base: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), n))
        return n

    def op(self, op_type: str, inputs: list[str], base: str, **attrs: Any) -> str:
        from onnx import helper

        out = self.name(base)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def chain(self, layers: tuple[Layer, ...], x: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        for layer in layers:
            x = self.layer(layer, x, shape)
            shape = layer.out_shape(shape)
        return x, shape

    def layer(self, layer: Layer, x: str, shape: tuple[int, ...]) -> str:
        if isinstance(layer, Linear):
            w = self.const("W", layer.weight.numpy())
            b = self.const("b", layer.bias.numpy())
            return self.op("Gemm", [x, w, b], "gemm", transB=1)
        if isinstance(layer, Conv2d):
            w = self.const("W", layer.weight.numpy())
            b = self.const("b", layer.bias.numpy())
            t, bo, l, r = layer.padding
            kh, kw = layer.kernel_size
            return self.op("Conv", [x, w, b], "conv", strides=list(layer.stride), pads=[t, l, bo, r],
                           kernel_shape=[kh, kw])
        if isinstance(layer, ReLU):
            return self.op("Relu", [x], "relu")
        if isinstance(layer, Flatten):
            if layer.order == "NHWC" and len(shape) == 3:
                x = self.op("Transpose", [x], "nhwc", perm=[0, 2, 3, 1])
            return self.op("Flatten", [x], "flatten", axis=1)
        if isinstance(layer, ChannelAffine):
            view = (-1,) + (1,) * (len(shape) - 1)
            s = self.const("scale", layer.scale.numpy().reshape(view))
            h = self.const("shift", layer.shift.numpy().reshape(view))
            return self.op("Add", [self.op("Mul", [x, s], "mul"), h], "add")
        if isinstance(layer, AvgPool2d):
            t, bo, l, r = layer.padding
            return self.op("AveragePool", [x], "avgpool", kernel_shape=list(layer.kernel), strides=list(layer.stride),
                           pads=[t, l, bo, r], count_include_pad=1)
        if isinstance(layer, MaxPool2d):
            ph, pw = layer.padding
            return self.op("MaxPool", [x], "maxpool", kernel_shape=list(layer.kernel), strides=list(layer.stride),
                           pads=[ph, pw, ph, pw])
        if isinstance(layer, Residual):
            a, _ = self.chain(layer.body, x, shape)
            b, _ = self.chain(layer.shortcut, x, shape)
            return self.op("Add", [a, b], "residual")
        raise ModelError(f"no ONNX export for layer {layer.describe()}")


def to_model(net: Network) -> Any:
    from onnx import TensorProto, helper

    bld = _Builder()
    out, _ = bld.chain(net.layers, "input", net.input_shape)
    bld.nodes.append(helper.make_node("Identity", [out], ["output"], name="output"))
    graph = helper.make_graph(
        bld.nodes, net.name or "network",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *net.input_shape])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", net.n_classes])],
        bld.inits,
    )
    model = helper.make_model(graph, producer_name="relu-verify", opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {
        "input_range": json.dumps(list(net.input_range)),
        "name": net.name,
        "metadata": json.dumps(net.metadata, default=str),
    })
    return model


def save(net: Network, path: PathLike) -> None:
    import onnx

    model = to_model(net)
    onnx.checker.check_model(model)
    write_atomic_with(path, lambda tmp: onnx.save(model, tmp))


# --------------------------------------------------------------------------- import


def load(path: PathLike) -> Network:
    import onnx

    p = check_readable(path)
    try:
        model = onnx.load(str(p))
    except Exception as e:
        raise cannot_read(path, e) from None
    graph = model.graph
    if len(graph.node) == 0:
        raise cannot_read(path, ValueError("the ONNX graph is empty (not an ONNX model?)"))
    props = {pp.key: pp.value for pp in model.metadata_props}
    try:
        rng = json.loads(props["input_range"]) if "input_range" in props else [0.0, 1.0]
        meta = json.loads(props.get("metadata") or "{}")
        rng = [float(v) for v in rng]
    except (ValueError, TypeError) as e:
        raise fail(path, f"bad metadata_props: {e}") from None
    if len(rng) != 2:
        raise fail(path, f"input_range must hold two numbers, got {rng}")
    name = props.get("name") or Path(path).stem
    with layer_errors(path):
        layers, in_shape = _Importer(graph, path).run()
        return Network(tuple(layers), in_shape, (rng[0], rng[1]), name, meta if isinstance(meta, dict) else {})


class _Sym:
    """A graph node of the network being rebuilt: a layer (or Add / NHWC transpose) on earlier nodes."""

    def __init__(self, op: Any, inputs: tuple[int, ...], shape: tuple[int, ...]) -> None:
        self.op = op  # Layer, "input", "add", "nhwc"
        self.inputs = inputs
        self.shape = shape
        self.uses = 0


class _Importer:
    def __init__(self, graph: Any, path: PathLike) -> None:
        self.graph = graph
        self.path = path
        self.consts: dict[str, np.ndarray] = {}
        self.syms: list[_Sym] = []
        self.where: dict[str, int] = {}  # tensor name -> index into syms
        self.readers: dict[str, int] = {}  # tensor name -> how many nodes (and graph outputs) read it

    # ---- helpers
    def err(self, msg: str) -> ModelError:
        return fail(self.path, msg)

    def new(self, op: Any, inputs: tuple[int, ...], shape: tuple[int, ...]) -> int:
        for i in inputs:
            self.syms[i].uses += 1
        self.syms.append(_Sym(op, inputs, shape))
        return len(self.syms) - 1

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def sym(self, name: str, node: Any) -> int:
        if name not in self.where:
            raise self.err(f"{node.op_type} node {node.name or ''} reads {name!r}, which is neither the input nor computed before")
        return self.where[name]

    def run(self) -> tuple[list[Layer], tuple[int, ...]]:
        from onnx import numpy_helper

        for init in self.graph.initializer:
            self.consts[init.name] = numpy_helper.to_array(init)
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise self.err(f"expected one graph input, found {len(inputs)}")
        dims = inputs[0].type.tensor_type.shape.dim
        shape = []
        for d in list(dims)[1:]:
            if not d.HasField("dim_value") or d.dim_value <= 0:
                raise self.err(f"input {inputs[0].name!r} has a non-fixed dimension {d.dim_param or '?'} besides the batch")
            shape.append(int(d.dim_value))
        if not shape:
            raise self.err("the graph input needs a batch dimension and at least one more")
        in_shape = tuple(shape)
        for node in self.graph.node:
            for name in node.input:
                self.readers[name] = self.readers.get(name, 0) + 1
        for o in self.graph.output:
            self.readers[o.name] = self.readers.get(o.name, 0) + 1
        self.syms.append(_Sym("input", (), in_shape))
        self.where[inputs[0].name] = 0
        for node in self.graph.node:
            self.visit(node)
        if len(self.graph.output) != 1:
            raise self.err(f"expected one graph output, found {len(self.graph.output)}")
        out = self.sym(self.graph.output[0].name, self.graph.output[0])
        if self.syms[out].op == "nhwc":
            raise self.err("the graph ends in a Transpose")
        return self.assemble(out, 0), self.syms[0].shape  # an input Reshape may have changed it

    # ---- node rules
    def visit(self, node: Any) -> None:
        op = node.op_type
        attrs = {a.name: _attr(a) for a in node.attribute}
        ins = list(node.input)
        if node.domain not in ("", "ai.onnx"):
            raise self.err(f"unsupported ONNX operator {node.domain}.{op}")
        if op == "Constant":
            self.consts[node.output[0]] = _constant_value(node, attrs, self)
            return
        if ins and all(self.is_const(i) for i in ins if i):
            self.consts[node.output[0]] = self.fold(op, [self.consts[i] if i else None for i in ins], attrs, node)
            return
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            raise self.err(f"unsupported ONNX operator {op} (node {node.name or node.output[0]})")
        try:
            out = handler(node, ins, attrs)
        except _Folded:
            return
        self.where[node.output[0]] = out

    def fold(self, op: str, vals: list[Any], attrs: dict[str, Any], node: Any) -> np.ndarray:
        """Constant arithmetic (shape computations of exported flatten ops)."""
        out: np.ndarray
        axes: Any  # an ONNX attribute (ints) or a constant input
        if op in ("Identity", "Cast"):
            out = vals[0]
            return out
        if op == "Unsqueeze":
            axes = attrs.get("axes") if "axes" in attrs else list(vals[1])
            v = vals[0]
            for a in sorted(int(x) for x in axes):
                v = np.expand_dims(v, a)
            out = v
            return out
        if op == "Squeeze":
            axes = attrs.get("axes") if "axes" in attrs else (list(vals[1]) if len(vals) > 1 else None)
            out = np.squeeze(vals[0], axis=tuple(int(a) for a in axes) if axes is not None else None)
            return out
        if op == "Concat":
            return np.concatenate([np.atleast_1d(v) for v in vals], axis=int(attrs.get("axis", 0)))
        if op == "Gather":
            out = np.take(vals[0], vals[1], axis=int(attrs.get("axis", 0)))
            return out
        if op in ("Add", "Sub", "Mul", "Div"):
            f = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op]
            out = f(vals[0], vals[1])
            return out
        if op == "Reshape":
            out = vals[0].reshape([int(s) for s in vals[1]])
            return out
        if op == "Transpose":
            out = np.transpose(vals[0], attrs.get("perm"))
            return out
        raise self.err(f"unsupported ONNX operator {op} on constants (node {node.name or node.output[0]})")

    def op_Shape(self, node: Any, ins: list[str], attrs: dict[str, Any]) -> int:
        s = self.syms[self.sym(ins[0], node)]
        self.consts[node.output[0]] = np.asarray([1, *s.shape], dtype=np.int64)  # batch shown as 1
        raise _Folded()

    def op_Identity(self, node: Any, ins: list[str], attrs: dict[str, Any]) -> int:
        return self.sym(ins[0], node)

    op_Dropout = op_Identity

    def op_Relu(self, node: Any, ins: list[str], attrs: dict[str, Any]) -> int:
        x = self.sym(ins[0], node)
        return self.new(ReLU(), (x,), self.syms[x].shape)

    def op_Gemm(self, node: Any, ins: list[str], attrs: dict[str, Any]) -> int:
        x = self.sym(ins[0], node)
        if len(ins) < 2 or not self.is_const(ins[1]) or (len(ins) > 2 and ins[2] and not self.is_const(ins[2])):
            raise self.err("Gemm needs constant B (and C)")
        if attrs.get("transA", 0):
            raise self.err("Gemm with transA=1 is not supported")
        w = self.consts[ins[1]].astype(np.float64) * float(attrs.get("alpha", 1.0))
        w = w if attrs.get("transB", 0) else w.T
        b = self.consts[ins[2]].astype(np.float64) * float(attrs.get("beta", 1.0)) if len(ins) > 2 and ins[2] else np.zeros(w.shape[0])
        return self.linear(node, x, w, np.broadcast_to(b.reshape(-1), (w.shape[0],)) if b.size == 1 else b)

    def op_MatMul(self, node: Any, ins: list[str], attrs: dict[str, Any]) -> int:
        if not self.is_const(ins[1]):
            raise self.err("MatMul needs a constant right-hand side (x @ W)")
        x = self.sym(ins[0], node)
        w = self.consts[ins[1]].astype(np.float64)
        if w.ndim != 2:
            raise self.err(f"MatMul weight must be 2-D, got shape {w.shape}")
        return self.linear(node, x, w.T, np.zeros(w.shape[1]))

    def linear(self, node: Any, x: int, w: np.ndarray, b: np.ndarray) -> int:
        shape = self.syms[x].shape
        if len(shape) > 1 and all(d == 1 for d in shape[:-1]):
            # x of shape (1, ..., 1, d) (e.g. an input declared [N, 1, 784]): ONNX multiplies the
            # last axis, which in C order is the flattened vector
            x = self.flatten(node, x)
            shape = self.syms[x].shape
        if len(shape) != 1:
            raise self.err(f"{node.op_type} on a tensor of shape {shape}: flatten it first")
        if w.shape[1] != shape[0]:
            raise self.err(f"{node.op_type} weight expects {w.shape[1]} inputs, gets {shape[0]}")
        if b.size != w.shape[0]:
            raise self.err(f"{node.op_type} bias has {b.size} entries, weight has {w.shape[0]} outputs")
        return self.new(Linear(w, b.reshape(-1)), (x,), (w.shape[0],))

    def op_Conv(self, node: Any, ins: list[str], attrs: dict[str, Any]) -> int:
        x = self.sym(ins[0], node)
        if not self.is_const(ins[1]) or (len(ins) > 2 and ins[2] and not self.is_const(ins[2])):
            raise self.err("Conv needs constant weights and bias")
        w = self.consts[ins[1]].astype(np.float64)
        b = self.consts[ins[2]].astype(np.float64) if len(ins) > 2 and ins[2] else None
        if w.ndim != 4:
            raise self.err(f"only 2-D convolutions are supported (weight shape {w.shape})")
        if int(attrs.get("group", 1)) != 1 or any(int(d) != 1 for d in attrs.get("dilations", [1, 1])):
            raise self.err("Conv with group != 1 or dilation != 1 is not supported")
        stride = [int(s) for s in attrs.get("strides", [1, 1])]
        pads = self.pads(attrs, self.syms[x].shape, (w.shape[2], w.shape[3]), stride)
        conv = Conv2d(w, b, stride, pads)
        return self.new(conv, (x,), conv.out_shape(self.syms[x].shape))

    def pads(self, attrs: dict[str, Any], shape: tuple[int, ...], k: tuple[int, int], stride: list[int]) -> tuple[int, int, int, int]:
        from ..network import same_padding

        auto = attrs.get("auto_pad", "NOTSET")
        if isinstance(auto, bytes):
            auto = auto.decode()
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            if len(shape) != 3:
                raise self.err(f"auto_pad on a tensor of shape {shape}")
            t, b, l, r = same_padding((shape[1], shape[2]), k, (stride[0], stride[1]))
            return (t, b, l, r) if auto == "SAME_UPPER" else (b, t, r, l)
        if auto == "VALID":
            return (0, 0, 0, 0)
        p = [int(v) for v in attrs.get("pads", [0, 0, 0, 0])]
        if len(p) != 4:
            raise self.err(f"pads must have 4 entries for 2-D operators, got {p}")
        return (p[0], p[2], p[1], p[3])  # ONNX: [top, left, bottom, right]

    def op_AveragePool(self, node: Any, ins: list[str], attrs: dict[str, Any]) -> int:
        x = self.sym(ins[0], node)
        k = [int(v) for v in attrs["kernel_shape"]]
        stride = [int(s) for s in attrs.get("strides", [1, 1])]
        pads = self.pads(attrs, self.syms[x].shape, (k[0], k[1]), stride)
        if attrs.get("ceil_mode", 0):
            raise self.err("AveragePool with ceil_mode=1 is not supported")
        if any(pads) and not attrs.get("count_include_pad", 0):
            raise self.err("padded AveragePool needs count_include_pad=1")
        pool = AvgPool2d(k, stride, pads)
        return self.new(pool, (x,), pool.out_shape(self.syms[x].shape))

    def op_MaxPool(self, node: Any, ins: list[str], attrs: dict[str, Any]) -> int:
        x = self.sym(ins[0], node)
        if len(node.output) > 1 and node.output[1]:
            raise self.err("MaxPool with an Indices output is not supported")
        k = [int(v) for v in attrs["kernel_shape"]]
        stride = [int(s) for s in attrs.get("strides", [1, 1])]
        t, b, l, r = self.pads(attrs, self.syms[x].shape, (k[0], k[1]), stride)
        if t != b or l != r or attrs.get("ceil_mode", 0) or any(int(d) != 1 for d in attrs.get("dilations", [1, 1])):
            raise self.err("MaxPool needs symmetric pads, ceil_mode=0 and dilation 1")
        pool = MaxPool2d(k, stride, (t, l))
        return self.new(pool, (x,), pool.out_shape(self.syms[x].shape))

    def op_Transpose(self, node: Any, ins: list[str], attrs: dict[str, Any]) -> int:
        x = self.sym(ins[0], node)
        perm = [int(p) for p in attrs.get("perm", [])]
        if perm != [0, 2, 3, 1] or len(self.syms[x].shape) != 3:
            raise self.err(f"Transpose with perm {perm} is supported only as NCHW->NHWC right before a flatten")
        c, h, w = self.syms[x].shape
        return self.new("nhwc", (x,), (h, w, c))

    def flatten(self, node: Any, x: int) -> int:
        s = self.syms[x]
        if s.op == "nhwc":
            return self.new(Flatten("NHWC"), (s.inputs[0],), (int(np.prod(s.shape)),))
        if len(s.shape) == 1:
            return x
        return self.new(Flatten("NCHW"), (x,), (int(np.prod(s.shape)),))

    def op_Flatten(self, node: Any, ins: list[str], attrs: dict[str, Any]) -> int:
        if int(attrs.get("axis", 1)) != 1:
            raise self.err(f"Flatten with axis={attrs.get('axis')} is not supported (only axis=1)")
        return self.flatten(node, self.sym(ins[0], node))

    def op_Reshape(self, node: Any, ins: list[str], attrs: dict[str, Any]) -> int:
        x = self.sym(ins[0], node)
        if not self.is_const(ins[1]):
            raise self.err("Reshape needs a constant target shape")
        target = [int(v) for v in self.consts[ins[1]].reshape(-1)]
        n = int(np.prod(self.syms[x].shape))
        if x == 0 and self.readers.get(ins[0], 0) == 1 and len(self.syms) == 1:
            # a reshape of the graph input before anything else reads it (e.g. [N, 784] -> [N, 1, 28, 28]):
            # C-order data is unchanged, so the network simply takes the reshaped input
            return self.reshape_input(node, x, target, n)
        if len(target) == 2 and target[1] in (-1, n) and target[0] in (-1, 0, 1):
            return self.flatten(node, x)
        if len(target) >= 1 and target[0] in (-1, 0, 1) and [t for t in target[1:]] == list(self.syms[x].shape):
            return x
        raise self.err(f"Reshape to {target} is supported only as a flatten to [batch, {n}]")

    def reshape_input(self, node: Any, x: int, target: list[int], n: int) -> int:
        in_shape = self.syms[x].shape
        dims = [in_shape[i - 1] if t == 0 and 0 < i <= len(in_shape) else t for i, t in enumerate(target)][1:]
        if target[0] not in (-1, 0, 1) or sum(d == -1 for d in dims) > 1 or any(d < -1 or d == 0 for d in dims):
            raise self.err(f"Reshape of the input to {target} is not supported")
        known = int(np.prod([d for d in dims if d != -1])) if dims else 1
        if -1 in dims:
            if known == 0 or n % known:
                raise self.err(f"Reshape of the input to {target}: {n} values do not fit")
            dims = [n // known if d == -1 else d for d in dims]
        if int(np.prod(dims)) != n or not dims:
            raise self.err(f"Reshape of the input to {target}: {n} values do not fit")
        self.syms[x].shape = tuple(dims)
        return x

    def channel_const(self, c: np.ndarray, shape: tuple[int, ...], node: Any) -> np.ndarray:
        """A constant that broadcasts per channel over (C, H, W) or per feature over (d,), as a (C,) vector."""
        ch = shape[0]
        v = np.asarray(c, dtype=np.float64)
        if v.size == 1:
            return np.full(ch, float(v.reshape(-1)[0]))
        while v.ndim > len(shape):
            if v.shape[0] != 1:
                break
            v = v[0]
        if v.ndim == len(shape) and v.shape[0] == ch and all(d == 1 for d in v.shape[1:]):
            return v.reshape(-1)
        raise self.err(f"{node.op_type} with a constant of shape {tuple(np.shape(c))} on a tensor of shape {shape}: "
                       "only per-channel constants are supported")

    def affine(self, node: Any, x: int, scale: np.ndarray, shift: np.ndarray, src: str) -> int:
        s = self.syms[x]
        prev = s.op
        # Fold into the layer that produced x when nothing else reads it (bias adds, Sub-then-Div).
        names = sum(1 for v in self.where.values() if v == x)
        alone = s.uses == 0 and x != 0 and self.readers.get(src, 0) == 1 and names == 1
        if alone and isinstance(prev, ChannelAffine):
            merged = ChannelAffine(prev.scale.numpy() * scale, prev.shift.numpy() * scale + shift)
            s.op = merged
            return x
        if alone and np.all(scale == 1.0) and isinstance(prev, (Linear, Conv2d)):
            if isinstance(prev, Linear):
                s.op = Linear(prev.weight.numpy(), prev.bias.numpy() + shift)
            else:
                s.op = Conv2d(prev.weight.numpy(), prev.bias.numpy() + shift, prev.stride, prev.padding)
            return x
        return self.new(ChannelAffine(scale, shift), (x,), s.shape)

    def binary(self, node: Any, ins: list[str]) -> tuple[int, np.ndarray, bool, str]:
        a, b = ins[0], ins[1]
        if self.is_const(b) and not self.is_const(a):
            x = self.sym(a, node)
            return x, self.channel_const(self.consts[b], self.syms[x].shape, node), False, a
        if self.is_const(a) and not self.is_const(b):
            x = self.sym(b, node)
            return x, self.channel_const(self.consts[a], self.syms[x].shape, node), True, b
        raise self.err(f"{node.op_type} of two computed tensors is supported only for Add (residual)")

    def op_Add(self, node: Any, ins: list[str], attrs: dict[str, Any]) -> int:
        if not self.is_const(ins[0]) and not self.is_const(ins[1]):
            a, b = self.sym(ins[0], node), self.sym(ins[1], node)
            if self.syms[a].shape != self.syms[b].shape:
                raise self.err(f"Add of shapes {self.syms[a].shape} and {self.syms[b].shape}")
            return self.new("add", (a, b), self.syms[a].shape)
        x, c, _, src = self.binary(node, ins)
        return self.affine(node, x, np.ones_like(c), c, src)

    def op_Sub(self, node: Any, ins: list[str], attrs: dict[str, Any]) -> int:
        x, c, const_first, src = self.binary(node, ins)
        if const_first:
            return self.affine(node, x, -np.ones_like(c), c, src)
        return self.affine(node, x, np.ones_like(c), -c, src)

    def op_Mul(self, node: Any, ins: list[str], attrs: dict[str, Any]) -> int:
        x, c, _, src = self.binary(node, ins)
        return self.affine(node, x, c, np.zeros_like(c), src)

    def op_Div(self, node: Any, ins: list[str], attrs: dict[str, Any]) -> int:
        x, c, const_first, src = self.binary(node, ins)
        if const_first:
            raise self.err("Div of a constant by a computed tensor is not supported")
        if np.any(c == 0):
            raise self.err("Div by zero")
        return self.affine(node, x, 1.0 / c, np.zeros_like(c), src)

    def op_BatchNormalization(self, node: Any, ins: list[str], attrs: dict[str, Any]) -> int:
        x = self.sym(ins[0], node)
        if not all(self.is_const(i) for i in ins[1:5]):
            raise self.err("BatchNormalization needs constant scale, bias, mean and var")
        g, b, m, v = (self.consts[i] for i in ins[1:5])
        bn = ChannelAffine.batchnorm(m, v, g, b, float(attrs.get("epsilon", 1e-5)))
        return self.affine(node, x, bn.scale.numpy(), bn.shift.numpy(), ins[0])

    # ---- from the node graph to layers (residuals from Add joins)
    def fork(self, a: int, b: int) -> int:
        """The nearest node both branches start from (the graphs we accept are series-parallel)."""
        spine_a = self.spine(a)
        seen = set(self.spine(b))
        for n in spine_a:
            if n in seen:
                return n
        raise self.err("two branches of an Add have no common start")

    def spine(self, n: int) -> list[int]:
        out = [n]
        while self.syms[n].op != "input":
            s = self.syms[n]
            n = self.fork(*s.inputs) if s.op == "add" else s.inputs[0]
            out.append(n)
        return out

    def assemble(self, end: int, start: int) -> list[Layer]:
        layers: list[Layer] = []
        n = end
        while n != start:
            s = self.syms[n]
            if s.op == "input":
                raise self.err("a branch does not start where its residual block starts")
            if s.op == "nhwc":
                raise self.err("Transpose is supported only right before a flatten")
            if s.op == "add":
                f = self.fork(*s.inputs)
                body = self.assemble(s.inputs[0], f)
                short = self.assemble(s.inputs[1], f)
                if not body:
                    body, short = short, body
                if not body:
                    raise self.err("Add of a tensor with itself")
                layers.append(Residual(body, short))
                n = f
            else:
                layers.append(s.op)
                n = s.inputs[0]
        return layers[::-1]


class _Folded(Exception):
    """Raised by an op handler that produced a constant instead of a node."""


def _attr(a: Any) -> Any:
    from onnx import helper

    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    return v


def _constant_value(node: Any, attrs: dict[str, Any], imp: _Importer) -> np.ndarray:
    from onnx import numpy_helper

    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    for key in ("value_float", "value_int"):
        if key in attrs:
            return np.asarray(attrs[key])
    for key in ("value_floats", "value_ints"):
        if key in attrs:
            return np.asarray(list(attrs[key]))
    raise imp.err(f"Constant node {node.name or node.output[0]} has no supported value attribute")
