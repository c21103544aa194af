"""VNNLIB: the property format of VNN-COMP, read and written.

The subset read here is the one VNN-COMP benchmarks use:

* ``(declare-const X_i Real)`` / ``(declare-const Y_j Real)``: the network's flattened input
  (C order, as the ONNX input tensor without its batch dimension) and output;
* ``(assert ...)`` of bounds on single inputs -- ``(<= X_3 0.5)``, ``(>= X_3 0.1)``, either
  side, any constant factor -- which together make the input box;
* ``(assert ...)`` of linear inequalities over the outputs, combined with ``and`` / ``or``
  and nested freely. Terms: numbers, ``Y_j``, ``(+ a b ...)``, ``(- a b)``, ``(- a)``,
  ``(* c a)`` with at least one constant factor, ``(/ a c)`` with a constant divisor.

The asserts together describe the UNSAFE region: ``sat`` means an input in the box whose
outputs satisfy them. They are multiplied out into a disjunction of conjunctions
(:class:`verify.properties.Disjunct`, rows ``C y <= d``). ``<`` and ``>`` are read as
``<=`` and ``>=``: a point exactly on the boundary counts as unsafe, the conservative
reading (a verifier that says ``unsat`` has proven even the boundary safe).

Input bounds inside an ``or`` are accepted only when every disjunct has the same ones
(they are then the box). Every error is a :class:`verify.errors.SpecError` naming the
file and line.
"""

from __future__ import annotations

import gzip
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np

from .errors import SpecError
from .properties import Disjunct, OutputProperty

# more disjuncts than this after multiplying out is almost surely a mistake (and would not finish)
MAX_DISJUNCTS = 100_000
_VAR = re.compile(r"^([XY])_(0|[1-9][0-9]*)$")


# --------------------------------------------------------------------------- s-expressions


@dataclass(frozen=True)
class _Atom:
    text: str
    line: int


@dataclass(frozen=True)
class _List:
    items: tuple["_Expr", ...]
    line: int  # the line of the opening parenthesis


_Expr = Union[_Atom, _List]


_TOKEN = re.compile(r"\n|[()]|;[^\n]*|[^\s();]+")


def _tokens(text: str) -> Iterator[tuple[str, int]]:
    """Parentheses and atoms with their line numbers; comments (';' to the end of the line) dropped."""
    line = 1
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok == "\n":
            line += 1
        elif tok[0] != ";":
            yield tok, line


def _read(text: str, source: str) -> list[_Expr]:
    """Top-level s-expressions; unbalanced parentheses are errors with the line."""
    stack: list[tuple[int, list[_Expr]]] = []
    top: list[_Expr] = []
    for tok, line in _tokens(text):
        if tok == "(":
            stack.append((line, []))
        elif tok == ")":
            if not stack:
                raise _err(source, line, "unexpected ')' (no matching '(')")
            start, items = stack.pop()
            node = _List(tuple(items), start)
            (stack[-1][1] if stack else top).append(node)
        else:
            if not stack:
                raise _err(source, line, f"{tok!r} outside parentheses")
            stack[-1][1].append(_Atom(tok, line))
    if stack:
        raise _err(source, stack[-1][0], "'(' is never closed")
    return top


def _err(source: str, line: int, msg: str) -> SpecError:
    return SpecError(f"{source}:{line}: {msg}")


# --------------------------------------------------------------------------- linear terms


@dataclass(frozen=True)
class _Lin:
    """sum coef[var] * var + const; var = ("X" | "Y", index)."""

    coef: dict[tuple[str, int], float]
    const: float

    def scaled(self, s: float) -> "_Lin":
        return _Lin({k: v * s for k, v in self.coef.items()}, self.const * s)

    def plus(self, o: "_Lin") -> "_Lin":
        c = dict(self.coef)
        for k, v in o.coef.items():
            c[k] = c.get(k, 0.0) + v
        return _Lin(c, self.const + o.const)

    @property
    def is_const(self) -> bool:
        return not any(v != 0 for v in self.coef.values())


@dataclass(frozen=True)
class _Cmp:
    """lin <= 0, from the source line ``line``."""

    lin: _Lin
    line: int


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.declared: dict[str, set[int]] = {"X": set(), "Y": set()}
        self.decl_line: dict[tuple[str, int], int] = {}

    def err(self, line: int, msg: str) -> SpecError:
        return _err(self.source, line, msg)

    def number(self, a: _Atom) -> float | None:
        try:
            v = float(a.text)
        except ValueError:
            return None
        if not math.isfinite(v):
            raise self.err(a.line, f"{a.text!r} is not a finite number")
        return v

    def declare(self, e: _List) -> None:
        items = e.items
        if len(items) != 3 or not all(isinstance(i, _Atom) for i in items[1:]):
            raise self.err(e.line, "declare-const needs a name and a type: (declare-const X_0 Real)")
        name, typ = items[1].text, items[2].text  # type: ignore[union-attr]
        m = _VAR.match(name)
        if not m:
            raise self.err(e.line, f"cannot declare {name!r}: variables are X_i (inputs) and Y_j (outputs)")
        if typ != "Real":
            raise self.err(e.line, f"{name} has type {typ!r}: only Real is supported")
        kind, idx = m.group(1), int(m.group(2))
        if idx in self.declared[kind]:
            raise self.err(e.line, f"{name} is declared twice")
        self.declared[kind].add(idx)
        self.decl_line[(kind, idx)] = e.line

    def term(self, e: _Expr) -> _Lin:
        if isinstance(e, _Atom):
            v = self.number(e)
            if v is not None:
                return _Lin({}, v)
            m = _VAR.match(e.text)
            if not m or int(m.group(2)) not in self.declared[m.group(1)]:
                raise self.err(e.line, f"unknown variable {e.text!r} (declare it with declare-const)")
            return _Lin({(m.group(1), int(m.group(2))): 1.0}, 0.0)
        if not e.items or not isinstance(e.items[0], _Atom):
            raise self.err(e.line, "a term must start with an operator (+, -, *, /)")
        op, args = e.items[0].text, [self.term(a) for a in e.items[1:]]
        if op == "+" and args:
            out = args[0]
            for a in args[1:]:
                out = out.plus(a)
            return out
        if op == "-" and len(args) == 1:
            return args[0].scaled(-1.0)
        if op == "-" and args:
            out = args[0]
            for a in args[1:]:
                out = out.plus(a.scaled(-1.0))
            return out
        if op == "*" and args:
            out = _Lin({}, 1.0)
            for a in args:
                if out.is_const:
                    out = a.scaled(out.const)
                elif a.is_const:
                    out = out.scaled(a.const)
                else:
                    raise self.err(e.line, "non-linear term: a product of two variables")
            return out
        if op == "/" and len(args) == 2:
            if not args[1].is_const:
                raise self.err(e.line, "non-linear term: division by a variable")
            if args[1].const == 0:
                raise self.err(e.line, "division by zero")
            return args[0].scaled(1.0 / args[1].const)
        if op in ("+", "-", "*", "/"):
            raise self.err(e.line, f"operator {op} with {len(args)} arguments")
        raise self.err(e.line, f"unknown operator {op!r} in a term (supported: + - * /)")

    def input_bound(self, c: _Cmp) -> tuple[int, str, float]:
        """A comparison over inputs as (index, 'lo' | 'hi', bound); only single-variable bounds."""
        nz = [(k, v) for k, v in c.lin.coef.items() if v != 0]
        if len(nz) != 1:
            raise self.err(c.line, "an input constraint over several X_ variables: only bounds on single inputs (a box)")
        (_, i), a = nz[0]
        # a * X_i + k <= 0  ->  X_i <= -k/a (a > 0) or X_i >= -k/a (a < 0). When the division
        # rounds, round outwards, so the box holds every point the file allows.
        v = -c.lin.const / a
        exact = abs(a) == 1.0 or Fraction(v) * Fraction(a) == -Fraction(c.lin.const)
        if a > 0:
            return (i, "hi", v if exact else float(np.nextafter(v, np.inf)))
        return (i, "lo", v if exact else float(np.nextafter(v, -np.inf)))

    def split(self, conj: list[_Cmp], n_out: int) -> tuple[list[tuple[int, str, float]], list[tuple[np.ndarray, float]], bool]:
        """A conjunction as (input bounds, output rows (C_i, d_i), whether no constant comparison is false)."""
        xs: list[tuple[int, str, float]] = []
        rows: list[tuple[np.ndarray, float]] = []
        ok = True
        for c in conj:
            kinds = {k for (k, _), v in c.lin.coef.items() if v != 0}
            if not kinds:
                ok = ok and not c.lin.const > 0  # a false constant comparison empties the conjunction
            elif kinds == {"X", "Y"}:
                raise self.err(c.line, "a constraint mixes inputs and outputs (X_ and Y_): not supported")
            elif kinds == {"X"}:
                xs.append(self.input_bound(c))
            else:
                row = np.zeros(n_out)
                for (_, j), v in c.lin.coef.items():
                    row[j] += v
                rows.append((row, -c.lin.const))
        return xs, rows, ok

    def formula(self, e: _Expr) -> list[list[_Cmp]]:
        """Disjunctive normal form: a list of disjuncts, each a list of comparisons lin <= 0."""
        if isinstance(e, _Atom) or not e.items or not isinstance(e.items[0], _Atom):
            line = e.line
            raise self.err(line, "expected a formula: (and ...), (or ...) or a comparison (<= a b)")
        op, args = e.items[0].text, e.items[1:]
        if op in ("and", "or"):
            if not args:
                raise self.err(e.line, f"({op}) needs at least one argument")
            parts = [self.formula(a) for a in args]
            if op == "or":
                return [d for p in parts for d in p]
            out: list[list[_Cmp]] = [[]]
            for p in parts:
                if len(out) * len(p) > MAX_DISJUNCTS:
                    raise self.err(e.line, f"more than {MAX_DISJUNCTS} disjuncts after multiplying out 'and' over 'or'")
                out = [a + b for a in out for b in p]
            return out
        if op in ("<=", ">=", "<", ">", "="):
            if len(args) != 2:
                raise self.err(e.line, f"{op} needs two arguments, got {len(args)}")
            a, b = self.term(args[0]), self.term(args[1])
            le = a.plus(b.scaled(-1.0))  # a - b
            if op in ("<=", "<"):
                return [[_Cmp(le, e.line)]]
            if op in (">=", ">"):
                return [[_Cmp(le.scaled(-1.0), e.line)]]
            return [[_Cmp(le, e.line), _Cmp(le.scaled(-1.0), e.line)]]
        if op == "not":
            raise self.err(e.line, "'not' is not supported (write the negated inequality)")
        raise self.err(e.line, f"unknown operator {op!r} in a formula (supported: and, or, <=, >=, <, >, =)")


def parse_vnnlib(text: str, *, source: str = "<vnnlib>") -> OutputProperty:
    """Parse VNNLIB text into an input box and a disjunction of linear output constraints."""
    p = _Parser(source)
    asserts: list[_List] = []
    for e in _read(text, source):
        if not isinstance(e, _List) or not e.items or not isinstance(e.items[0], _Atom):
            raise p.err(e.line, "expected (declare-const ...) or (assert ...)")
        head = e.items[0].text
        if head == "declare-const":
            p.declare(e)
        elif head == "assert":
            if len(e.items) != 2:
                raise p.err(e.line, "assert takes exactly one formula")
            asserts.append(e)
        elif head in ("set-logic", "check-sat", "get-model", "set-info", "exit"):
            continue  # SMT-LIB housekeeping some generators emit
        else:
            raise p.err(e.line, f"unsupported command {head!r} (expected declare-const or assert)")
    for kind in ("X", "Y"):
        idx = sorted(p.declared[kind])
        if not idx:
            raise _err(source, 1, f"no {kind}_ variables declared")
        if idx != list(range(len(idx))):
            missing = next(i for i in range(len(idx) + 1) if i not in p.declared[kind])
            raise _err(source, 1, f"{kind}_{missing} is not declared but {kind}_{idx[-1]} is (indices must be 0..n-1)")
    n_in, n_out = len(p.declared["X"]), len(p.declared["Y"])

    common: list[_Cmp] = []  # asserts that are plain conjunctions (the input bounds): no product needed
    dnf: list[list[_Cmp]] = [[]]
    for a in asserts:
        part = p.formula(a.items[1])
        if len(part) == 1:
            common.extend(part[0])
            continue
        if len(dnf) * len(part) > MAX_DISJUNCTS:
            raise p.err(a.line, f"more than {MAX_DISJUNCTS} disjuncts after combining the asserts")
        dnf = [x + y for x in dnf for y in part]

    lower = np.full(n_in, -np.inf)
    upper = np.full(n_in, np.inf)
    c_xs, c_rows, c_ok = p.split(common, n_out)
    input_sets: list[frozenset[tuple[int, str, float]]] = []
    x_lines: list[int] = []  # per disjunct: the line of its first input bound (for errors)
    disjuncts: list[Disjunct] = []
    for conj in dnf:
        xs, rows, ok = p.split(conj, n_out)
        input_sets.append(frozenset(xs) - frozenset(c_xs))
        x_lines.append(min((c.line for c in conj if any(k == "X" for (k, _) in c.lin.coef)), default=1))
        if ok and c_ok:
            rows = c_rows + rows
            C = np.stack([r for r, _ in rows]) if rows else np.zeros((0, n_out))
            d = np.asarray([v for _, v in rows], dtype=np.float64)
            disjuncts.append(Disjunct(C, d))
    if len(set(input_sets)) > 1:
        odd = next(i for i, k in enumerate(input_sets) if k != input_sets[0])
        line = x_lines[odd] if input_sets[odd] else x_lines[0]
        raise _err(source, line, "input bounds differ between disjuncts of an 'or': only one input box is supported")
    for i, kind, v in c_xs + sorted(input_sets[0] if input_sets else ()):
        if kind == "lo":
            lower[i] = max(lower[i], v)
        else:
            upper[i] = min(upper[i], v)
    for i in range(n_in):
        line = p.decl_line[("X", i)]
        if not (np.isfinite(lower[i]) and np.isfinite(upper[i])):
            side = "lower" if not np.isfinite(lower[i]) else "upper"
            raise _err(source, line, f"X_{i} has no {side} bound: every input needs (>= X_{i} lo) and (<= X_{i} hi)")
        if lower[i] > upper[i]:
            raise _err(source, line, f"X_{i} has lower bound {lower[i]!r} > upper bound {upper[i]!r}")
    return OutputProperty(lower, upper, tuple(disjuncts), n_out)




def read_text(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{path}: no such VNNLIB file")
    try:
        raw = p.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # VNN-COMP ships some properties gzipped
            raw = gzip.decompress(raw)
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
        raise SpecError(f"{path}: cannot read VNNLIB file: {e}") from None


def load_vnnlib(path: str | Path) -> OutputProperty:
    return parse_vnnlib(read_text(path), source=str(path))


# --------------------------------------------------------------------------- writing


def robustness_vnnlib(lower: np.ndarray, upper: np.ndarray, label: int, n_classes: int, *, comment: str = "") -> str:
    """The VNN-COMP robustness property: in the box, some class j != label scores >= the label's."""
    lo = np.asarray(lower, dtype=np.float64).reshape(-1)
    hi = np.asarray(upper, dtype=np.float64).reshape(-1)
    if not 0 <= label < n_classes:
        raise SpecError(f"label {label} outside 0..{n_classes - 1}")
    out = [f"; {line}" for line in comment.splitlines()] if comment else []
    out += [f"(declare-const X_{i} Real)" for i in range(len(lo))]
    out += [f"(declare-const Y_{j} Real)" for j in range(n_classes)]
    out.append("; input box")
    for i in range(len(lo)):
        out.append(f"(assert (<= X_{i} {_num(hi[i])}))")
        out.append(f"(assert (>= X_{i} {_num(lo[i])}))")
    out.append(f"; unsafe: some class scores at least as high as class {label}")
    out.append("(assert (or")
    out += [f"    (and (>= Y_{j} Y_{label}))" for j in range(n_classes) if j != label]
    out.append("))")
    return "\n".join(out) + "\n"


def _num(v: float) -> str:
    """Shortest decimal that reads back as exactly this float64."""
    return repr(float(v))


def format_result(status: str, x: Sequence[float] | np.ndarray | None = None,
                  y: Sequence[float] | np.ndarray | None = None) -> str:
    """The VNN-COMP result file: ``unsat``, ``timeout``, ``unknown``, or ``sat`` with ((X_i v) ... (Y_j v))."""
    if status != "sat":
        return status + "\n"
    if x is None or y is None:
        raise ValueError("a sat result needs the counterexample")
    pairs = [f"(X_{i} {_num(v)})" for i, v in enumerate(x)] + [f"(Y_{j} {_num(v)})" for j, v in enumerate(y)]
    return "sat\n(" + "\n ".join(pairs) + ")\n"


def parse_result(text: str) -> tuple[str, np.ndarray | None, np.ndarray | None]:
    """Read a result file back: (status, x, y); x and y only for sat."""
    lines = text.strip().split("\n", 1)
    status = lines[0].strip()
    if status != "sat":
        return status, None, None
    body = lines[1] if len(lines) > 1 else ""
    vals = {m.group(1): float(m.group(2)) for m in re.finditer(r"\(\s*([XY]_\d+)\s+([^\s()]+)\s*\)", body)}
    xs = [vals[f"X_{i}"] for i in range(sum(k.startswith("X_") for k in vals))]
    ys = [vals[f"Y_{j}"] for j in range(sum(k.startswith("Y_") for k in vals))]
    return status, np.asarray(xs), np.asarray(ys)


__all__ = ["MAX_DISJUNCTS", "format_result", "load_vnnlib", "parse_result", "parse_vnnlib", "read_text",
           "robustness_vnnlib"]
