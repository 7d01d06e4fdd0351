"""Tests for dltui.engine.inspect_tensor: the view-expression allow-list and the inspect reply."""

from __future__ import annotations

import itertools
import json
import math
import random
import time
import warnings

import pytest
import torch

from dltui.engine.inspect_tensor import InspectError, inspect, parse_expr


def _reference(expr: str, x: torch.Tensor) -> torch.Tensor:
    # The tests (not the module) may eval: this is torch applied directly, the oracle.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # x.T on a 3-D tensor warns; the module is quiet too
        return eval(expr, {"__builtins__": {}}, {"x": x})


def _assert_same_view(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    assert got.stride() == want.stride()
    assert got.storage_offset() == want.storage_offset()
    assert got.dtype == want.dtype
    assert torch.equal(got, want)


def _storage_arange(shape: tuple[int, ...], offset: int = 0) -> torch.Tensor:
    """A contiguous tensor whose every value is its own storage position."""
    numel = math.prod(shape)
    return torch.arange(offset + numel, dtype=torch.float64)[offset:].view(shape)


METHOD_CASES = [
    ("x.t()", (3, 4)),
    ("x.T", (3, 4)),
    ("x.mT", (2, 3, 4)),
    ("x.transpose(0, 1)", (3, 4)),
    ("x.transpose(-1, 0)", (2, 3, 4)),
    ("x.transpose(dim0=0, dim1=2)", (2, 3, 4)),
    ("x.permute(2, 0, 1)", (2, 3, 4)),
    ("x.permute((1, 2, 0))", (2, 3, 4)),
    ("x.permute([1, 0, 2])", (2, 3, 4)),
    ("x.view(4, -1)", (2, 3, 4)),
    ("x.view((6, 4))", (2, 3, 4)),
    ("x.view(-1)", (2, 3, 4)),
    ("x.reshape(3, 8)", (2, 3, 4)),
    ("x.t().reshape(-1)", (3, 4)),
    ("x.narrow(1, 1, 2)", (3, 4)),
    ("x.narrow(-1, 0, 3)", (3, 4)),
    ("x.select(0, 1)", (3, 4)),
    ("x.select(1, -1)", (3, 4)),
    ("x.squeeze()", (1, 3, 1, 4)),
    ("x.squeeze(0)", (1, 3, 1, 4)),
    ("x.squeeze(dim=2)", (1, 3, 1, 4)),
    ("x.squeeze((0, 2))", (1, 3, 1, 4)),
    ("x.unsqueeze(0)", (3, 4)),
    ("x.unsqueeze(-1)", (3, 4)),
    ("x.flatten()", (2, 3, 4)),
    ("x.flatten(1)", (2, 3, 4)),
    ("x.flatten(0, 1)", (2, 3, 4)),
    ("x.flatten(start_dim=1, end_dim=2)", (2, 3, 4)),
    ("x.expand(2, 3, 4)", (3, 1)),
    ("x.expand(5, -1, -1)", (3, 4)),
    ("x.diagonal()", (4, 4)),
    ("x.diagonal(1)", (4, 4)),
    ("x.diagonal(0, 1, 2)", (2, 3, 3)),
    ("x.diagonal(offset=-1, dim1=0, dim2=1)", (4, 4)),
    ("x.unfold(0, 3, 2)", (10,)),
    ("x.unfold(1, 2, 1)", (3, 4)),
    ("x.as_strided((2, 2), (1, 2))", (3, 4)),
    ("x.as_strided((2, 3), (4, 1), 1)", (3, 4)),
    ("x.as_strided(size=(3,), stride=(5,), storage_offset=0)", (3, 4)),
    ("x.contiguous()", (3, 4)),
    ("x.t().contiguous()", (3, 4)),
    ("x.chunk(2)[1]", (4, 3)),
    ("x.chunk(3, 1)[-1]", (4, 3)),
    ("x.chunk(2, dim=1)[0]", (4, 3)),
    ("x.split(2)[1]", (5, 3)),
    ("x.split([1, 2], 1)[1]", (4, 3)),
    ("x.split((2, 3))[0]", (5, 3)),
    ("x[1]", (3, 4)),
    ("x[-1, 2]", (3, 4)),
    ("x[1:3]", (4, 4)),
    ("x[:, ::2]", (3, 4)),
    ("x[None, ..., 1]", (2, 3, 4)),
    ("x[...]", (3, 4)),
    ("x[()]", (3, 4)),
    ("x[1:-1:2, None, -3:]", (5, 6)),
    ("x.t()[1:3, ::2]", (3, 4)),
    ("x.view(4, -1).transpose(0, 1)", (2, 3, 4)),
    ("(x.t())[0]", (3, 4)),
]


@pytest.mark.parametrize(("expr", "shape"), METHOD_CASES, ids=[c[0] for c in METHOD_CASES])
def test_each_listed_method_matches_torch(expr: str, shape: tuple[int, ...]) -> None:
    x = _storage_arange(shape, offset=3)
    got, want = parse_expr(expr)(x), _reference(expr, x)
    _assert_same_view(got, want)
    reply = inspect(x, "w", expr)
    assert reply["shape"] == list(want.shape)
    assert reply["stride"] == list(want.stride())
    assert reply["storage_offset"] == want.storage_offset()
    copied = want.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    assert reply["shares_storage"] is not copied
    for cell in reply["values"]:
        assert cell["value"] == want[tuple(cell["index"])].item()
        if not copied:
            assert cell["value"] == cell["storage"]  # the base holds its own storage positions


def _random_base(rnd: random.Random) -> torch.Tensor:
    """A base tensor over an arange storage: random shape, offset, and dim order."""
    shape = [rnd.randint(1, 5) for _ in range(rnd.randint(1, 4))]
    order = list(range(len(shape)))
    rnd.shuffle(order)
    stored = _storage_arange(tuple(shape[d] for d in order), offset=rnd.randint(0, 3))
    # stored has dims in `order`; permuting back gives `shape` with a non-trivial stride.
    return stored.permute([order.index(d) for d in range(len(shape))])


def _random_literal_index(rnd: random.Random, t: torch.Tensor) -> str:
    parts = []
    for size in t.shape:
        pick = rnd.random()
        if pick < 0.3:
            parts.append(str(rnd.randint(-size, size - 1)))
        elif pick < 0.8:
            lo, hi = rnd.choice(["", str(rnd.randint(-size, size))]), rnd.choice(["", str(size)])
            parts.append(f"{lo}:{hi}" + rnd.choice(["", ":2", ":3", ":1"]))
        else:
            parts.append(":")
    if rnd.random() < 0.3:
        parts.insert(rnd.randint(0, len(parts)), "None")
    if rnd.random() < 0.2 and parts:
        parts[0:1] = ["..."]
    return "[" + ", ".join(parts) + "]" if parts else "[None]"


def _random_op(rnd: random.Random, t: torch.Tensor) -> tuple[str, str]:
    """(kind, expression suffix) for a random, possibly invalid, op on t."""
    nd = t.dim()
    dim = lambda extra=0: rnd.randint(-nd - extra, nd - 1 + extra) if nd else 0  # noqa: E731
    size = lambda d: t.shape[d] if nd else 1  # noqa: E731
    kind = rnd.choice(
        "t T mT transpose permute view reshape narrow select squeeze unsqueeze flatten expand "
        "diagonal unfold as_strided contiguous chunk split index".split()
    )
    if kind in ("t", "contiguous"):
        return kind, f".{kind}()"
    if kind in ("T", "mT"):
        return kind, f".{kind}"
    if kind == "transpose":
        return kind, f".transpose({dim()}, {dim()})"
    if kind == "permute":
        perm = list(range(nd))
        rnd.shuffle(perm)
        return kind, rnd.choice([f".permute({tuple(perm)})", f".permute({perm})"])
    if kind in ("view", "reshape"):
        numel, dims = t.numel(), []
        while numel > 1 and len(dims) < 3:
            factor = rnd.choice([f for f in range(1, numel + 1) if numel % f == 0])
            dims.append(factor)
            numel //= factor
        dims.append(numel)
        if rnd.random() < 0.5:
            dims[rnd.randrange(len(dims))] = -1
        return kind, f".{kind}({', '.join(map(str, dims))})"
    if kind == "narrow":
        d = dim()
        start = rnd.randint(0, size(d))
        return kind, f".narrow({d}, {start}, {rnd.randint(0, size(d) - start)})"
    if kind == "select":
        d = dim()
        return kind, f".select({d}, {rnd.randint(-size(d), size(d) - 1)})"
    if kind == "squeeze":
        return kind, rnd.choice([".squeeze()", f".squeeze({dim()})", f".squeeze(dim={dim()})"])
    if kind == "unsqueeze":
        return kind, f".unsqueeze({dim(1)})"
    if kind == "flatten":
        return kind, rnd.choice([".flatten()", f".flatten({dim()})", f".flatten(0, {dim()})"])
    if kind == "expand":
        sizes = [rnd.choice([1, 2, 3]) if s == 1 else -1 for s in t.shape]
        return (
            kind,
            f".expand({', '.join(map(str, [rnd.randint(1, 3)] * rnd.randint(0, 1) + sizes))})",
        )
    if kind == "diagonal":
        return kind, f".diagonal({rnd.randint(-2, 2)}, {dim()}, {dim()})"
    if kind == "unfold":
        d = dim()
        return kind, f".unfold({d}, {rnd.randint(1, size(d))}, {rnd.randint(1, 2)})"
    if kind == "as_strided":
        shape = tuple(rnd.randint(1, 3) for _ in range(rnd.randint(1, 2)))
        stride = tuple(rnd.randint(0, 3) for _ in shape)
        return kind, f".as_strided({shape}, {stride}, {rnd.randint(0, 2)})"
    if kind in ("chunk", "split"):
        d = dim()
        arg = rnd.randint(1, 3) if kind == "chunk" or rnd.random() < 0.5 else [1, size(d) - 1]
        return kind, f".{kind}({arg}, {d})[{rnd.randint(-1, 1)}]"
    return kind, _random_literal_index(rnd, t)


def test_random_view_chains_match_torch() -> None:
    rnd = random.Random(1234)
    kinds_used: set[str] = set()
    for _chain in range(200):
        x = _random_base(rnd)
        expr, want, kinds = "x", x, []
        for _op in range(rnd.randint(1, 4)):
            for _attempt in range(50):  # draw ops until torch itself accepts one
                try:
                    kind, suffix = _random_op(rnd, want)  # ValueError: no valid arguments
                    candidate = _reference(expr + suffix, x)
                except (RuntimeError, IndexError, ValueError, TypeError):
                    continue
                if isinstance(candidate, torch.Tensor):
                    expr, want = expr + suffix, candidate
                    kinds.append(kind)
                    break
        kinds_used.update(kinds)
        _assert_same_view(parse_expr(expr)(x), want)

        reply = inspect(x, "w", expr, window=16)
        assert (reply["shape"], reply["stride"]) == (list(want.shape), list(want.stride())), expr
        assert reply["storage_offset"] == want.storage_offset()
        assert reply["numel"] == want.numel() and reply["is_contiguous"] == want.is_contiguous()
        shares = want.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
        assert reply["shares_storage"] == shares, expr
        indices = list(itertools.product(*map(range, want.shape)))[:16]
        assert [c["index"] for c in reply["values"]] == [list(i) for i in indices], expr
        for cell in reply["values"]:
            assert cell["value"] == want[tuple(cell["index"])].item(), expr
            if shares:  # every value of the base is its own storage position
                assert cell["storage"] == cell["value"], expr
            else:
                pos = want.storage_offset() + sum(
                    i * s for i, s in zip(cell["index"], want.stride(), strict=True)
                )
                assert cell["storage"] == pos, expr
        window = reply["storage_window"]
        assert 0 <= window["lo"] <= window["hi"] <= reply["storage_numel"]
        assert window["hi"] - window["lo"] <= 32
        assert all(window["lo"] <= p < window["hi"] for p in window["touched"])
        assert reply["truncated"] == (want.numel() > 16)
    assert len(kinds_used) == 20, kinds_used  # every op kind took part in some chain


REFUSED = [
    "x.__class__",
    "x.__dict__",
    "x.numpy()",
    "x.data_ptr()",
    "x.add_(1)",
    "x.fill_(0)",
    "__import__('os')",
    "y",
    "x[y]",
    "x[x > 0]",
    "(lambda: 1)()",
    "x.view(*[1])",
    "x.view(**{'a': 1})",
    "x.t",
    "x.view",
    "x.T()",
    "getattr(x, 't')",
    "x.t()[0].item()",
    "open('f')",
    "x + 1",
    "-x",
    "x and x",
    "x if 1 else x",
    "[x for x in ()]",
    "f'{x}'",
    "x.view(10**100)",
    "x.view(99999999999)",
    "x[2147483649]",
    "x[1.5]",
    "x['a']",
    "x[True]",
    "x[[0, 1]]",
    "x.view(x.shape)",
    "x.view(1.0)",
    "x.chunk(2)",
    "x.chunk(2).t()",
    "x.chunk(2)[0:1]",
    "x.t()()",
    "x.grad",
    "x.data",
    "(y := x)",
]


@pytest.mark.parametrize("expr", REFUSED)
def test_allow_list_refuses(expr: str) -> None:
    x = torch.arange(10.0, requires_grad=True)
    with pytest.raises(InspectError, match="is not allowed"):
        parse_expr(expr)
    with pytest.raises(InspectError):
        inspect(x, "w", expr)
    assert torch.equal(x.detach(), torch.arange(10.0))  # nothing ran


def test_refusal_says_what_and_where() -> None:
    with pytest.raises(InspectError) as err:
        parse_expr("x.t().numpy()")
    msg = str(err.value)
    assert "`x.t().numpy` is not allowed (column 1)" in msg
    assert "only view methods t, T, mT, transpose" in msg
    with pytest.raises(InspectError, match=r"`y` is not allowed \(column 7\): the only name is x"):
        parse_expr("x.t()[y]")
    with pytest.raises(InspectError, match=r"write `x.t\(\)`"):
        parse_expr("x.t")
    with pytest.raises(InspectError, match=r"capped at ±2\*\*31"):
        parse_expr("x.view(10000000000000000000000)")
    with pytest.raises(InspectError, match=r"arithmetic is never evaluated"):
        parse_expr("x.view(10**100)")
    with pytest.raises(InspectError, match=r"pick one first, as x.chunk\(2\)\[0\]"):
        parse_expr("x.chunk(2)")


def test_long_input_is_refused_before_parsing() -> None:
    with pytest.raises(InspectError, match="501 characters; the limit is 500"):
        parse_expr("x" + ".t()" * 125)
    parse_expr("x" + ".t()" * 124)  # 497 characters is fine


@pytest.mark.parametrize(("expr", "column"), [("x.t(", 4), ("x[1:2", 2), ("x.view(1,,2)", 10)])
def test_syntax_error_gives_column(expr: str, column: int) -> None:
    with pytest.raises(InspectError, match=rf"syntax error at column {column}\b"):
        parse_expr(expr)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("x.view(3, -1)", "x.view(3, -1): shape '[3, -1]' is invalid for input of size 10"),
        ("x[10]", "x[10]: index 10 is out of bounds"),
        ("x[::-1]", "x[::-1]: step must be greater than zero"),
        ("x.t().transpose(0, 5)", "x.t().transpose(0, 5): Dimension out of range"),
        ("x.chunk(2)[5]", "x.chunk(2)[5]: there are 2 pieces, 0..1"),
        ("x.t(1)", "x.t(1): "),
        ("x.view(1, 2, dim=3)", "x.view(1, 2, dim=3): "),
        ("x.as_strided((100,), (1,))", "x.as_strided((100,), (1,)): "),
    ],
)
def test_torch_failure_is_a_clean_error(expr: str, message: str) -> None:
    with pytest.raises(InspectError) as err:
        inspect(torch.arange(10.0), "w", expr)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_transposed_slice_positions() -> None:
    x = torch.arange(12.0).reshape(3, 4)
    reply = inspect(x, "w", "x.t()[1:3, ::2]")
    assert (reply["shape"], reply["stride"], reply["storage_offset"]) == ([2, 2], [1, 8], 1)
    assert reply["values"] == [
        {"index": [0, 0], "storage": 1, "value": 1.0},
        {"index": [0, 1], "storage": 9, "value": 9.0},
        {"index": [1, 0], "storage": 2, "value": 2.0},
        {"index": [1, 1], "storage": 10, "value": 10.0},
    ]
    assert reply["storage_window"]["touched"] == [1, 2, 9, 10]
    assert reply["shares_storage"] and not reply["is_contiguous"] and not reply["truncated"]
    assert reply["base"] == {
        "shape": [3, 4],
        "stride": [4, 1],
        "storage_offset": 0,
        "numel": 12,
        "is_contiguous": True,
    }
    assert (reply["storage_numel"], reply["storage_nbytes"], reply["element_size"]) == (12, 48, 4)


def test_huge_tensor_inspects_quickly_with_sampled_stats() -> None:
    big = torch.arange(50_000_000, dtype=torch.float32)
    for expr in (None, "x.view(5000, 10000).t()", "x.view(100, 500, 1000).permute(2, 0, 1)"):
        start = time.perf_counter()
        reply = inspect(big, "big", expr)
        assert time.perf_counter() - start < 1.0, expr
        stats = reply["stats"]
        assert stats["sampled"] and stats["count"] <= 1 << 20
        assert stats["min"] == 0.0 and 4.9e7 < stats["max"] < 5.0e7
        assert abs(stats["mean"] - 2.5e7) < 1e6
        assert len(reply["values"]) == 64 and reply["truncated"]


def test_copies_of_huge_views_are_refused_not_allocated() -> None:
    big = torch.arange(50_000_000, dtype=torch.float32)
    with pytest.raises(InspectError, match="would copy 50,000,000 elements"):
        inspect(big, "big", "x.view(5000, 10000).t().contiguous()")
    with pytest.raises(InspectError, match="would copy"):
        inspect(big, "big", "x.view(5000, 10000).t().reshape(-1)")
    with pytest.raises(InspectError, match="would copy"):
        inspect(torch.zeros(10), "w", "x.expand(2147483647, 10).contiguous()")
    reply = inspect(big, "big", "x.reshape(-1, 10).flatten()")  # viewable: no copy
    assert reply["shares_storage"] and reply["shape"] == [50_000_000]
    reply = inspect(torch.zeros(10), "w", "x.expand(2147483647, 10)")
    assert reply["numel"] == 21_474_836_470 and reply["stats"]["sampled"]


def test_small_copies_are_allowed_and_flagged() -> None:
    reply = inspect(torch.arange(12.0).reshape(3, 4), "w", "x.t().contiguous()")
    assert not reply["shares_storage"] and reply["is_contiguous"]
    assert [c["value"] for c in reply["values"][:4]] == [0.0, 4.0, 8.0, 1.0]
    assert [c["storage"] for c in reply["values"][:4]] == [0, 1, 2, 3]


def test_zero_dim_and_empty_tensors() -> None:
    reply = inspect(torch.tensor(3.5), "s")
    assert reply["shape"] == [] and reply["stride"] == []
    assert reply["values"] == [{"index": [], "storage": 0, "value": 3.5}]
    assert reply["stats"]["min"] == 3.5 and reply["stats"]["std"] is None
    reply = inspect(torch.zeros(0, 3), "e", "x.t()")
    assert reply["shape"] == [3, 0] and reply["values"] == [] and not reply["truncated"]
    assert reply["stats"]["min"] is None and reply["stats"]["count"] == 0
    assert reply["storage_window"]["touched"] == []
    assert inspect(torch.arange(5.0), "w", "x[3:3]")["values"] == []


def test_requires_grad_is_reported_and_not_tracked() -> None:
    w = torch.nn.Parameter(torch.randn(4, 3))
    reply = inspect(w, "layer.weight", "x.t()[0]")
    assert reply["requires_grad"] is True
    view = parse_expr("x.t()")(w.detach())
    assert view.grad_fn is None


def test_stats_are_nan_safe() -> None:
    x = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 3.0])
    stats = inspect(x, "w")["stats"]
    assert (stats["min"], stats["max"], stats["mean"]) == (1.0, 3.0, 2.0)
    assert stats["std"] == pytest.approx(torch.tensor([1.0, 3.0]).std().item())
    assert (stats["nan"], stats["inf"]) == (1, 2)
    stats = inspect(torch.full((3,), float("nan")), "w")["stats"]
    assert stats["min"] is None and stats["mean"] is None and stats["nan"] == 3


@pytest.mark.parametrize(
    "x",
    [
        torch.tensor([[True, False], [True, True]]),
        torch.arange(6, dtype=torch.int32).reshape(2, 3),
        torch.tensor([2**62, -5]),
        torch.tensor([1, 200], dtype=torch.uint8),
        torch.tensor([1 + 2j, -3j]),
        torch.randn(2, 3).half(),
        torch.randn(2, 3).bfloat16(),
    ],
    ids=lambda t: str(t.dtype),
)
def test_dtypes_are_handled(x: torch.Tensor) -> None:
    reply = inspect(x, "w", "x.T" if x.dim() == 2 else None)
    json.dumps(reply, allow_nan=False)  # serialisable as strict JSON when values are finite
    assert reply["dtype"] == str(x.dtype).removeprefix("torch.")
    assert reply["element_size"] == x.element_size()
    first = reply["values"][0]["value"]
    if x.dtype == torch.bool:
        assert isinstance(first, bool) and reply["stats"]["max"] is True
    elif x.is_complex():
        assert first == [1.0, 2.0] and reply["stats"]["of"] == "abs"
    elif x.is_floating_point():
        assert first == x.T[0, 0].item()
    else:
        assert isinstance(first, int) and reply["stats"]["min"] == int(x.min())
        assert reply["stats"]["max"] == int(x.max())


def test_window_bounds_values_and_storage_window() -> None:
    x = torch.arange(1000.0).reshape(10, 100)
    reply = inspect(x, "w", "x.t()", window=8)
    assert len(reply["values"]) == 8 and reply["truncated"]
    assert [c["storage"] for c in reply["values"]] == [0, 100, 200, 300, 400, 500, 600, 700]
    window = reply["storage_window"]
    assert window["hi"] - window["lo"] <= 16 and window["clipped"]
    reply = inspect(x, "w", "x[2, 10:14]", window=8)
    window = reply["storage_window"]
    assert window["lo"] <= 210 and window["hi"] >= 214 and window["hi"] - window["lo"] == 16
    assert window["touched"] == [210, 211, 212, 213] and not window["clipped"]


def test_bad_bases_are_refused() -> None:
    with pytest.raises(InspectError, match="not a tensor"):
        inspect([1, 2], "w")  # type: ignore[arg-type]
    with pytest.raises(InspectError, match="only strided tensors"):
        inspect(torch.eye(3).to_sparse(), "w")


def test_empty_expression_means_x_and_parse_is_reusable() -> None:
    view = parse_expr("  x.t()  ")
    for shape in ((2, 3), (4, 5)):
        x = torch.randn(shape)
        _assert_same_view(view(x), x.t())
    assert inspect(torch.ones(2), "w", "")["shape"] == [2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensor() -> None:
    x = torch.arange(12.0, device="cuda").reshape(3, 4)
    reply = inspect(x, "w", "x.t()[1:3, ::2]")
    assert reply["device"].startswith("cuda")
    assert [c["value"] for c in reply["values"]] == [1.0, 9.0, 2.0, 10.0]
    big = torch.zeros(50_000_000, device="cuda")
    assert inspect(big, "big", "x.view(5000, -1).t()")["stats"]["sampled"]
