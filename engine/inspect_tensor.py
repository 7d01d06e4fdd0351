"""Inspect a named tensor through a safe view expression (`x.t()[1:3]`): layout, stats, values."""

from __future__ import annotations

import ast
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

MAX_EXPR_CHARS = 500
INT_CAP = 2**31
MAX_WINDOW = 4096
# Stats above this many elements run on a strided sample, so a huge tensor costs a bounded amount.
STATS_LIMIT = 1 << 20
# contiguous()/reshape()/flatten() may copy; a copy larger than this is refused, not allocated.
COPY_LIMIT = 1 << 23
# chunk()/split() make one Python tensor per piece: 3 million pieces took 17 s and 2.2 GB on the
# training thread. More pieces than this are refused (narrow() or indexing takes one directly).
MAX_PIECES = 4096

_ATTRS = ("T", "mT")
_METHODS = (
    "t",
    "transpose",
    "permute",
    "view",
    "reshape",
    "narrow",
    "select",
    "squeeze",
    "unsqueeze",
    "flatten",
    "expand",
    "diagonal",
    "unfold",
    "as_strided",
    "contiguous",
    "chunk",
    "split",
)
_TUPLE_METHODS = ("chunk", "split")
_MAY_COPY = ("reshape", "flatten")

_ONLY_VIEWS = (
    "only view methods t, T, mT, transpose, permute, view, reshape, narrow, select, squeeze, "
    "unsqueeze, flatten, expand, diagonal, unfold, as_strided, contiguous, chunk, split "
    "may be called on x, with literal arguments"
)
_COPY_REFUSAL = "{}: this would copy {:,} elements, over the limit of {:,}; inspect it unchanged"
_ARG_RULE = "arguments must be literal ints (2, -1) or tuples/lists of them"
_INDEX_RULE = "indices must be literal ints, slices with literal bounds (1:3, ::2), None or ..."

# Why a kind of node is refused; the default names the node type.
_KIND_WHY = {
    ast.BinOp: "arithmetic is",
    ast.UnaryOp: "operators are",
    ast.BoolOp: "boolean operators are",
    ast.Compare: "comparisons are",
    ast.Lambda: "lambdas are",
    ast.ListComp: "comprehensions are",
    ast.SetComp: "comprehensions are",
    ast.DictComp: "comprehensions are",
    ast.GeneratorExp: "comprehensions are",
    ast.JoinedStr: "f-strings are",
    ast.IfExp: "conditional expressions are",
    ast.NamedExpr: "assignments are",
    ast.Starred: "star-unpacking is",
    ast.Await: "awaits are",
}
_CONST_NAMES = {
    "str": "strings",
    "float": "floats",
    "complex": "complex numbers",
    "bool": "True/False",
}


class InspectError(ValueError):
    """A tensor expression that is refused or fails; the message speaks to the user."""


@dataclass
class _Step:
    kind: str  # "attr", "call", "index" (into a tensor) or "pick" (into chunk/split's tuple)
    name: str
    text: str  # source up to and including this step, for error messages
    args: Any = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


class _Refused(Exception):
    def __init__(self, node: ast.AST, why: str) -> None:
        self.node, self.why = node, why


def _why(node: ast.AST, rule: str) -> str:
    if isinstance(node, ast.Constant):
        kind = _CONST_NAMES.get(type(node.value).__name__, repr(node.value))
        return f"{kind} cannot be used here; {rule}"
    if isinstance(node, ast.Name):
        return f"the only name is x, the tensor being inspected; {rule}"
    if isinstance(node, ast.Call | ast.Attribute | ast.Subscript):
        return f"tensor-valued or computed values are not accepted; {rule}"
    kind = _KIND_WHY.get(type(node))
    what = f"{kind} never evaluated" if kind else f"{type(node).__name__} is not accepted"
    return f"{what}; {rule}"


def _int(node: ast.AST) -> int | None:
    """The value of a literal int or negated literal int, or None when it is anything else."""
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        sign, node = -1, node.operand
    if not isinstance(node, ast.Constant) or type(node.value) is not int:
        return None
    if abs(node.value) > INT_CAP:
        raise _Refused(node, f"integers are capped at ±2**31 ({INT_CAP:,})")
    return sign * node.value


def _literal(node: ast.AST | None, rule: str, *, none: bool = False) -> int | None:
    if none and (node is None or (isinstance(node, ast.Constant) and node.value is None)):
        return None
    value = _int(node)  # type: ignore[arg-type]
    if value is None:
        raise _Refused(node, _why(node, rule))  # type: ignore[arg-type]
    return value


def _arg(node: ast.AST) -> Any:
    if isinstance(node, ast.Tuple | ast.List):
        items = [_literal(elt, _ARG_RULE) for elt in node.elts]
        # A list stays a list: split([2, 3]) means sections, split(2) means a size.
        return tuple(items) if isinstance(node, ast.Tuple) else items
    return _literal(node, _ARG_RULE)


def _index_item(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and (node.value is None or node.value is Ellipsis):
        return node.value
    if isinstance(node, ast.Slice):
        bounds = (node.lower, node.upper, node.step)
        return slice(*(_literal(b, _INDEX_RULE, none=True) for b in bounds))
    return _literal(node, _INDEX_RULE)


def _index(node: ast.AST) -> Any:
    if isinstance(node, ast.Tuple):
        return tuple(_index_item(elt) for elt in node.elts)
    return _index_item(node)


class _Walker:
    def __init__(self, src: str) -> None:
        self.src = src

    def text(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.src, node) or type(node).__name__

    def chain(self, node: ast.AST) -> tuple[list[_Step], bool]:
        """The steps from x to node, and whether node is a tuple (chunk/split) not a tensor."""
        if isinstance(node, ast.Name):
            if node.id != "x":
                raise _Refused(node, "the only name is x, the tensor being inspected")
            return [], False
        if isinstance(node, ast.Attribute):
            if node.attr in _METHODS:
                raise _Refused(node, f"a method must be called: write `{self.text(node)}()`")
            if node.attr not in _ATTRS:
                raise _Refused(node, _ONLY_VIEWS)
            steps, is_tuple = self.chain(node.value)
            self._need_tensor(node.value, is_tuple)
            return [*steps, _Step("attr", node.attr, self.text(node))], False
        if isinstance(node, ast.Call):
            func = node.func
            if not isinstance(func, ast.Attribute):
                why = _why(func, _ONLY_VIEWS) if type(func) in _KIND_WHY else _ONLY_VIEWS
                raise _Refused(func, why)
            if func.attr in _ATTRS:
                raise _Refused(node, f"{func.attr} is an attribute: write `{self.text(func)}`")
            if func.attr not in _METHODS:
                raise _Refused(func, _ONLY_VIEWS)
            steps, is_tuple = self.chain(func.value)
            self._need_tensor(func.value, is_tuple)
            args = tuple(_arg(a) for a in node.args)
            kwargs = {}
            for kw in node.keywords:
                if kw.arg is None:
                    raise _Refused(kw.value, f"**-unpacking is never evaluated; {_ARG_RULE}")
                kwargs[kw.arg] = _arg(kw.value)
            step = _Step("call", func.attr, self.text(node), args, kwargs)
            return [*steps, step], func.attr in _TUPLE_METHODS
        if isinstance(node, ast.Subscript):
            steps, is_tuple = self.chain(node.value)
            if is_tuple:
                pick = _int(node.slice)
                if pick is None:
                    raise _Refused(node.slice, "pick one piece of chunk/split with a literal int")
                return [*steps, _Step("pick", "", self.text(node), pick)], False
            return [*steps, _Step("index", "", self.text(node), _index(node.slice))], False
        raise _Refused(node, _why(node, "an expression is x followed by views and indexing"))

    def _need_tensor(self, node: ast.AST, is_tuple: bool) -> None:
        if is_tuple:
            raise _Refused(node, f"a tuple of tensors; pick one first, as {self.text(node)}[0]")


class _ViewChain:
    """A validated expression; calling it applies the steps to a tensor."""

    def __init__(self, expr: str, steps: list[_Step]) -> None:
        self.expr, self.steps = expr, steps

    def __repr__(self) -> str:
        return f"parse_expr({self.expr!r})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        value: Any = x
        # x.T on a tensor that is not 2-D warns; the user asked for it, so don't spam the log.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for step in self.steps:
                try:
                    value = _apply(step, value)
                except InspectError:
                    raise
                except (RuntimeError, IndexError, TypeError, ValueError, OverflowError) as exc:
                    first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
                    raise InspectError(f"{step.text}: {first.rstrip(':')}") from exc
        return value


def _apply(step: _Step, value: Any) -> Any:
    if step.kind == "attr":
        return getattr(value, step.name)
    if step.kind == "pick":
        if not -len(value) <= step.args < len(value):
            raise InspectError(f"{step.text}: there are {len(value)} pieces, 0..{len(value) - 1}")
        return value[step.args]
    if step.kind == "index":
        return value[step.args]
    if step.name in _TUPLE_METHODS:
        pieces = _pieces(step, value)
        if pieces is not None and pieces > MAX_PIECES:
            raise InspectError(
                f"{step.text}: this makes {pieces:,} pieces, over the limit of {MAX_PIECES:,}; "
                "take the one you want directly, with narrow(dim, start, length) or an index"
            )
    if step.name == "contiguous" and not value.is_contiguous() and value.numel() > COPY_LIMIT:
        raise InspectError(_COPY_REFUSAL.format(step.text, value.numel(), COPY_LIMIT))
    if step.name in _MAY_COPY and value.numel() > COPY_LIMIT:
        # Learn the target shape on the meta device (no memory), then insist on a real view.
        meta = torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")
        shape = getattr(meta, step.name)(*step.args, **step.kwargs).shape
        try:
            return value.view(shape)
        except RuntimeError:
            raise InspectError(_COPY_REFUSAL.format(step.text, value.numel(), COPY_LIMIT)) from None
    return getattr(value, step.name)(*step.args, **step.kwargs)


def _pieces(step: _Step, value: torch.Tensor) -> int | None:
    """How many tensors chunk()/split() would return, without making them (None: let torch say
    what is wrong with the arguments)."""
    args, kw = step.args, step.kwargs
    first = (
        args[0]
        if args
        else kw.get("chunks", kw.get("split_size_or_sections", kw.get("split_size")))
    )
    dim = args[1] if len(args) > 1 else kw.get("dim", 0)
    if not isinstance(dim, int) or not -value.ndim <= dim < max(value.ndim, 1) or value.ndim == 0:
        return None
    size = value.shape[dim]
    if isinstance(first, (list, tuple)):
        return len(first)
    if not isinstance(first, int) or first <= 0:
        return None
    if step.name == "chunk":
        return min(first, max(size, 1))
    return max(1, -(-size // first))


def parse_expr(expr: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Validate a view expression over `x` once; the result applies it. Raises InspectError."""
    if not isinstance(expr, str):
        raise InspectError(f"the expression must be text, not {type(expr).__name__}")
    if len(expr) > MAX_EXPR_CHARS:
        raise InspectError(
            f"the expression is {len(expr):,} characters; the limit is {MAX_EXPR_CHARS}"
        )
    src = expr.strip() or "x"
    try:
        tree = ast.parse(src, mode="eval")
    except SyntaxError as exc:
        where = f"line {exc.lineno}, column {exc.offset}" if "\n" in src else f"column {exc.offset}"
        where = f" at {where}" if exc.offset else ""
        raise InspectError(f"syntax error{where} in {src!r}: {exc.msg}") from None
    except (ValueError, MemoryError, RecursionError) as exc:  # e.g. NUL bytes, absurd nesting
        raise InspectError(f"the expression cannot be parsed: {exc}") from None
    walker = _Walker(src)
    try:
        steps, is_tuple = walker.chain(tree.body)
        walker._need_tensor(tree.body, is_tuple)
    except _Refused as refused:
        raise InspectError(_refusal(src, refused)) from None
    except RecursionError:
        raise InspectError("the expression is nested too deeply") from None
    return _ViewChain(src, steps)


def _refusal(src: str, refused: _Refused) -> str:
    node = refused.node
    text = ast.get_source_segment(src, node) or type(node).__name__
    if len(text) > 60:
        text = text[:57] + "..."
    line = src.splitlines()[node.lineno - 1] if hasattr(node, "lineno") else ""
    # col_offset counts UTF-8 bytes; users count characters.
    col = len(line.encode()[: getattr(node, "col_offset", 0)].decode(errors="ignore")) + 1
    where = f"line {node.lineno}, column {col}" if "\n" in src else f"column {col}"
    return f"`{text}` is not allowed ({where}): {refused.why}"


def _layout(t: torch.Tensor) -> dict[str, Any]:
    return {
        "shape": list(t.shape),
        "stride": list(t.stride()),
        "storage_offset": t.storage_offset(),
        "numel": t.numel(),
        "is_contiguous": t.is_contiguous(),
    }


def _first_values(view: torch.Tensor, count: int) -> list[Any]:
    """The first `count` values in row-major order, moving at most ~2*count elements to the host."""
    shape = list(view.shape)
    block, inner = view, 1
    # Keep full inner dims, cut the dim where `count` is reached, take index 0 of the outer
    # dims: the block's row-major order then starts like the view's, and it has < 2*count cells.
    for dim in reversed(range(len(shape))):
        block = block.narrow(dim, 0, min(shape[dim], -(-count // inner)))
        inner *= shape[dim]
    flat = block.contiguous().cpu().reshape(-1)[:count]
    if flat.is_complex():
        return [[z.real, z.imag] for z in flat.to(torch.complex128).tolist()]
    if flat.is_floating_point():
        return flat.to(torch.float64).tolist()
    return flat.tolist()


def _sample(view: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A strided sample of at most STATS_LIMIT elements (the view itself when small enough)."""
    if view.numel() <= STATS_LIMIT:
        return view, False
    sizes = list(view.shape)
    steps = [1] * len(sizes)

    def lengths() -> list[int]:
        return [-(-n // s) for n, s in zip(sizes, steps, strict=True)]

    while math.prod(lengths()) > STATS_LIMIT:
        lens = lengths()
        dim = max(range(len(lens)), key=lens.__getitem__)
        # Shrink the longest dim by the whole excess ratio; want < its length, so each pass
        # makes progress, and a dim shrunk to 1 hands the rest of the excess to the next.
        want = max(1, int(lens[dim] * STATS_LIMIT / math.prod(lens)))
        steps[dim] = -(-sizes[dim] // want)
    return view[tuple(slice(None, None, s) for s in steps)], True


def _stats(view: torch.Tensor) -> dict[str, Any] | None:
    if view.device.type == "meta":
        return None  # no data to read
    sample, sampled = _sample(view)
    out: dict[str, Any] = {"sampled": sampled, "count": sample.numel()}
    if sample.numel() == 0:
        return {**out, "min": None, "max": None, "mean": None, "std": None, "nan": 0, "inf": 0}
    if sample.is_complex():
        out["of"] = "abs"  # complex numbers have no order; stats describe their magnitude
        sample = sample.abs()
    vals = sample.to(torch.float64).reshape(-1)
    finite = torch.isfinite(vals)
    n = finite.sum()
    mean = torch.where(finite, vals, 0.0).sum() / n.clamp(min=1)
    var = torch.where(finite, (vals - mean) ** 2, 0.0).sum() / (n - 1).clamp(min=1)
    inf = torch.tensor(math.inf, dtype=torch.float64, device=vals.device)
    packed = torch.stack(
        [
            n.to(torch.float64),
            torch.where(finite, vals, inf).min(),
            torch.where(finite, vals, -inf).max(),
            mean,
            var.sqrt(),
            torch.isnan(vals).sum().to(torch.float64),
            torch.isinf(vals).sum().to(torch.float64),
        ]
    )
    # One .cpu() for all figures: on CUDA each .item() would be a separate host-device sync.
    count, lo, hi, mean_v, std_v, nans, infs = packed.cpu().tolist()
    if count and not sample.is_floating_point():
        if sample.dtype != torch.uint64:  # int64 can't hold it; float64 will do
            # Integers beyond 2**53 lose precision in float64; take min/max in int64.
            as_int = sample.to(torch.int64)
            lo, hi = torch.stack([as_int.min(), as_int.max()]).cpu().tolist()
        kind = bool if sample.dtype == torch.bool else int
        lo, hi = kind(lo), kind(hi)
    found = count > 0
    out.update(min=lo if found else None, max=hi if found else None)
    out.update(mean=mean_v if found else None, std=std_v if count > 1 else None)
    return {**out, "nan": int(nans), "inf": int(infs)}


def _storage_window(
    positions: list[int], offset: int, storage_numel: int, window: int
) -> dict[str, Any]:
    touched = sorted(set(positions))
    lo, hi = (touched[0], touched[-1] + 1) if touched else (min(offset, storage_numel),) * 2
    length = min(2 * window, storage_numel)
    hi = min(hi, lo + length)
    # Pad evenly around the touched span, clamped to the storage.
    lo = max(0, lo - (length - (hi - lo)) // 2)
    hi = min(storage_numel, lo + length)
    lo = max(0, hi - length)
    shown = [p for p in touched if lo <= p < hi]
    return {"lo": lo, "hi": hi, "touched": shown, "clipped": len(shown) < len(touched)}


def inspect(
    base: torch.Tensor, name: str, expr: str | None = None, window: int = 64
) -> dict[str, Any]:
    """Apply `expr` to `base` and describe the result: layout, storage, stats, a window of values."""
    if not isinstance(base, torch.Tensor):
        raise InspectError(f"{name} is not a tensor (it is a {type(base).__name__})")
    if base.layout != torch.strided:
        raise InspectError(
            f"{name} has layout {base.layout}; only strided tensors can be inspected"
        )
    chain = parse_expr(expr or "x")
    requires_grad = base.requires_grad
    base = base.detach()
    view = chain(base)
    window = max(0, min(int(window), MAX_WINDOW))
    count = min(window, view.numel())

    shape, stride, offset = list(view.shape), list(view.stride()), view.storage_offset()
    values: list[dict[str, Any]] = []
    if count and view.device.type != "meta":
        for flat_i, value in enumerate(_first_values(view, count)):
            index, rest = [], flat_i
            for size in reversed(shape):
                rest, i = divmod(rest, size)
                index.append(i)
            index.reverse()
            pos = offset + sum(i * s for i, s in zip(index, stride, strict=True))
            values.append({"index": index, "storage": pos, "value": value})

    try:
        stats = _stats(view)
    except (RuntimeError, TypeError) as exc:  # a dtype some reduction lacks must not hide the rest
        stats = {"error": f"stats unavailable for {view.dtype}: {exc}"}
    storage = view.untyped_storage()
    element_size = view.element_size()
    storage_numel = storage.nbytes() // element_size
    return {
        "name": name,
        "expr": expr,
        "dtype": str(view.dtype).removeprefix("torch."),
        "device": str(view.device),
        **_layout(view),
        "storage_numel": storage_numel,
        "storage_nbytes": storage.nbytes(),
        "element_size": element_size,
        "shares_storage": storage.data_ptr() == base.untyped_storage().data_ptr(),
        "requires_grad": requires_grad,
        "stats": stats,
        "values": values,
        "truncated": view.numel() > len(values),
        "base": _layout(base),
        "storage_window": _storage_window(
            [v["storage"] for v in values], offset, storage_numel, window
        ),
    }
