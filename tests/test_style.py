"""Style rules of the test suite that keep it green on any machine.

``test_no_exact_float_equality_in_tests`` parses every file under ``tests/`` with :mod:`ast` and fails
on an ``==`` / ``!=`` comparison where either side is a float that no computation can be trusted to hit
to the last bit:

- a float literal whose decimal value is not exactly a binary double (``0.7``, ``0.01``,
  ``0.7071067811865476``; also inside list/tuple/set/dict literals and constant expressions such as
  ``1 / 3`` or ``-0.1``);
- a call of a transcendental or reducing function (``math.sqrt``, ``np.exp``, ``torch.log``, ...,
  ``np.mean``, ``torch.norm``) or of the methods ``.mean()``, ``.std()``, ``.var()``, ``.norm()``, compared
  with anything but an exactly representable constant.

Such values depend on summation order, SIMD width, thread count and libm version: the last bit differs
between machines (``[0.7071067811865475, 0.0] != [0.7071067811865476, 0.0]`` made ``make test`` red on a
fresh machine). Compare with ``pytest.approx``, ``math.isclose`` or ``torch.testing.assert_close``;
a comparison with ``pytest.approx(...)`` on either side is never flagged.

Allowed, because exact arithmetic can hit them on every machine: exactly representable constants
(``0.0``, ``0.5``, ``2.5``, ``1024.0``, ``(5 + 1 + 9 + 3) / 8``), as tests built on hand-made exact data use.
A comparison that is exact *by construction* although the rule cannot see it (a literal stored and read
back unchanged, e.g. a config value) may stay when its line, or a comment line just above it, carries
``# exact: <why>``.

``test_no_wall_clock_bounds_in_tests`` fails on an ``assert`` that orders (``<``, ``<=``, ``>``, ``>=``) a
name, key or attribute ending in ``elapsed_s``, ``wall_s`` or ``seconds``, or a call of
``time.monotonic()``/``time.time()``/``time.perf_counter()`` against anything but ``0``: a loaded machine
can miss any such bound. Budget logic is tested with an injected clock.

Each rule is itself tested on snippets that must and must not be flagged (so the check cannot pass
by finding nothing).
"""

from __future__ import annotations

import ast
import json
import operator
from fractions import Fraction
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
FLOAT_FUNCS = {"sqrt", "exp", "expm1", "log", "log1p", "log2", "log10", "sin", "cos", "tan", "tanh", "sinh", "cosh",
               "arctan", "atan", "atan2", "hypot", "pow", "erf", "mean", "std", "var", "norm", "median", "average",
               "fsum", "dist", "linalg"}
FLOAT_METHODS = {"mean", "std", "var", "norm"}
FLOAT_MODULES = {"math", "np", "numpy", "torch"}
CLOCK_NAMES = ("elapsed_s", "wall_s", "seconds")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _constant(node: ast.AST) -> Fraction | None:
    """The exact value of a numeric constant expression (literals, + - * /), or None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return Fraction(repr(node.value)) if isinstance(node.value, float) else Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _constant(node.operand)
        return None if inner is None else (-inner if isinstance(node.op, ast.USub) else inner)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        a, b = _constant(node.left), _constant(node.right)
        if a is None or b is None or (isinstance(node.op, ast.Div) and b == 0):
            return None
        return _OPS[type(node.op)](a, b)
    return None


def _inexact_constant(node: ast.AST) -> bool:
    """A constant (or a literal container holding one) whose exact value is not a binary double."""
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return any(_inexact_constant(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return any(_inexact_constant(v) for v in node.values)
    value = _constant(node)
    if value is None:  # arithmetic on variables: fragile when it involves an inexact constant
        if isinstance(node, ast.BinOp):
            return _inexact_constant(node.left) or _inexact_constant(node.right)
        return isinstance(node, ast.UnaryOp) and _inexact_constant(node.operand)
    try:
        return Fraction(float(value)) != value
    except OverflowError:
        return True


def _computed_float(node: ast.AST) -> bool:
    """A call of a transcendental or reducing function or method (its last bit is machine dependent)."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Attribute):
        if isinstance(func.value, ast.Name) and func.value.id in FLOAT_MODULES:
            return func.attr in FLOAT_FUNCS
        if isinstance(func.value, ast.Attribute) and func.value.attr == "linalg":
            return True
        return func.attr in FLOAT_METHODS
    return False


def _is_approx(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "approx"


def _fragile(left: ast.AST, right: ast.AST) -> bool:
    if _is_approx(left) or _is_approx(right):
        return False
    if _inexact_constant(left) or _inexact_constant(right):
        return True
    for a, b in ((left, right), (right, left)):
        if _computed_float(a) and _constant(b) is None:
            return True
    return False


def float_equalities(source: str, filename: str = "<test>") -> list[str]:
    """``file:line: code`` of every fragile float (in)equality in ``source`` without an ``# exact:`` reason."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, operands, operands[1:]):
            if isinstance(op, (ast.Eq, ast.NotEq)) and _fragile(left, right):
                above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
                if "# exact:" not in lines[node.lineno - 1] and not above.startswith("# exact:"):
                    found.append(f"{filename}:{node.lineno}: {lines[node.lineno - 1].strip()}")
                break
    return found


def _is_clock(node: ast.AST) -> bool:
    if isinstance(node, ast.Name):
        return node.id.endswith(CLOCK_NAMES)
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        return str(node.slice.value).endswith(CLOCK_NAMES)
    if isinstance(node, ast.Attribute):
        return node.attr.endswith(CLOCK_NAMES)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return isinstance(node.func.value, ast.Name) and node.func.value.id == "time" and node.func.attr in (
            "monotonic", "time", "perf_counter")
    return False


def wall_clock_bounds(source: str, filename: str = "<test>") -> list[str]:
    """``file:line: code`` of every ``assert`` that bounds a wall-clock quantity (``<``, ``<=``, ``>``, ``>=``)."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Assert):
            continue
        for cmp in (n for n in ast.walk(node.test) if isinstance(n, ast.Compare)):
            ordered = any(isinstance(op, (ast.Lt, ast.LtE, ast.Gt, ast.GtE)) for op in cmp.ops)
            operands = (cmp.left, *cmp.comparators)
            clock = any(_is_clock(n) for op in operands for n in ast.walk(op))
            if ordered and clock and not any(_constant(n) == 0 for n in operands):
                found.append(f"{filename}:{cmp.lineno}: {lines[cmp.lineno - 1].strip()}")
    return found


def _test_sources():
    return [(p.relative_to(TESTS.parent).as_posix(), p.read_text()) for p in sorted(TESTS.rglob("*.py"))]


def test_no_exact_float_equality_in_tests():
    found = [hit for name, src in _test_sources() for hit in float_equalities(src, name)]
    assert not found, "exact float comparisons (use pytest.approx / math.isclose):\n" + "\n".join(found)


def test_no_clock_bounds_in_tests():
    hits = [hit for name, src in _test_sources() for hit in wall_clock_bounds(src, name)]
    assert hits == [], "time bounds in tests (inject a clock instead):\n" + "\n".join(hits)


@pytest.mark.parametrize("code", [
    "assert x == 0.7",
    "assert [a, b] == [0.7071067811865476, 0.0]",
    "assert x != -0.1",
    "assert x == {'a': 0.01}",
    "assert f(x) == 1 / 3",
    "assert y == 2 * x + 0.1",
    "assert math.sqrt(2) * 2 == y and math.sqrt(y) == z",
    "assert t.mean() == m",
    "assert np.exp(a) == b",
    "assert torch.linalg.norm(a) == b",
    "assert 0 < x == 0.3",
    "assert cfg.lr == 1e-3",
])
def test_float_rule_flags(code):
    assert float_equalities(code), code


@pytest.mark.parametrize("code", [
    "assert x == pytest.approx(0.7)",
    "assert n == 3 and name == 'a'",
    "assert xs == [1, 2, 3] and ys == [0.5, 0.0, -2.25]",
    "assert neg(u) == (5 + 1 + 9 + 3) / 8",
    "assert t.mean() == 2.5 and float(t.sum()) == 0.0",
    "assert math.isclose(x, 0.7)",
    "assert cfg.lr == 0.01  # exact: the YAML literal read back",
    "assert x < 0.1",
    "assert out == tmp_path / 'report.html'",
])
def test_float_rule_passes(code):
    assert not float_equalities(code), code


CLOCK_CASES = json.loads((TESTS / "style_clock_cases.json").read_text())["cases"]


@pytest.mark.parametrize(("code", "flagged"), CLOCK_CASES)
def test_timing_rule_flags_exactly_the_marked_snippets(code, flagged):
    """The style rule itself (no run is timed here): each snippet of the data file is flagged or not."""
    findings = wall_clock_bounds(code)
    assert bool(findings) is flagged, code
