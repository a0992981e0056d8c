"""One number parser: plain numbers, numbers inside text, and the value of simple arithmetic answers."""

from __future__ import annotations

import ast
import math
import operator
import re
import warnings

NUMBER = re.compile(r"[-+]?(?:\d+(?:_\d+)+(?:\.\d*)?|\d{1,3}(?:,\d{3})+(?:\.\d*)?|\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
"""One written number: sign, thousands commas or Python's ``1_000``, decimals, exponent."""

_BIN_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
            ast.Pow: operator.pow}
_NAMES = {"pi": math.pi}
_EXPRESSION_CHARS = re.compile(r"[\d.\s+\-*/()a-z]*")


def _token_value(token: str) -> float | None:
    if not NUMBER.fullmatch(token):
        return None
    try:
        return float(token.replace(",", ""))
    except (ValueError, OverflowError):
        return None


def parse_number(text: str | None) -> float | None:
    """A number written plainly (``1,234.5``, ``-3``, ``1e3``, ``45%``, ``$12``, ``3/4``), else None.

    A trailing full stop, a leading ``$`` and a trailing ``%`` are ignored (``45%`` is 45).
    """
    if text is None:
        return None
    text = str(text).strip().rstrip(".").strip().removeprefix("$").removesuffix("%")
    if not text:
        return None
    value = _token_value(text)
    if value is not None:
        return value
    if text.count("/") == 1:
        top, bottom = (_token_value(part.strip()) for part in text.split("/"))
        if top is not None and bottom:
            return top / bottom
    return None


def numbers_in(text: str | None) -> list[float]:
    """Every number written in `text`, in order (thousands separators and Python's "1_000" allowed)."""
    found = []
    for token in NUMBER.findall(text or ""):
        token = token.rstrip(".,").replace(",", "")
        try:
            found.append(float(token))
        except ValueError:
            continue
    return found


def values_close(a: float, b: float, rel_tol: float = 1e-4, abs_tol: float = 1e-6) -> bool:
    """Numeric equality up to float formatting (relative 1e-4, absolute 1e-6 by default)."""
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)


def math_value(text: str | None) -> float | None:
    """The numeric value of a plain or LaTeX-ish arithmetic answer ("3/4", "2\\sqrt{3}", "\\frac{\\pi}{2}").

    Only numbers, + - * / ^, sqrt and pi are understood (evaluated on a checked syntax tree, never
    with `eval`); anything else gives None.
    """
    if text is None:
        return None
    try:
        return float(text.strip().replace(",", "")) if NUMBER.fullmatch(text.strip()) else _evaluate(text)
    except (ValueError, OverflowError):
        return None


def _latex_to_expression(text: str) -> str:
    text = text.strip().strip("$").strip()
    text = re.sub(r"^[A-Za-z]\w*\s*=\s*", "", text)  # "x = 5" -> "5"
    text = re.sub(r"\\text\{([^{}]*)\}|\\mathrm\{([^{}]*)\}", lambda m: m.group(1) or m.group(2) or "", text)
    text = re.sub(r"\\left|\\right|\\!|\\,|\\;|\\:|\\displaystyle|\$", "", text)
    text = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree|\\%|%", "", text)
    previous = None
    while previous != text:  # innermost first, so nesting unwinds
        previous = text
        text = re.sub(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"((\1)/(\2))", text)
        text = re.sub(r"\\sqrt\s*\{([^{}]*)\}", r"sqrt(\1)", text)
    text = re.sub(r"\\sqrt\s*(\d+(?:\.\d+)?)", r"sqrt(\1)", text)
    text = re.sub(r"√\s*\(", "sqrt(", text)
    text = re.sub(r"√\s*(\d+(?:\.\d+)?)", r"sqrt(\1)", text)
    text = re.sub(r"\\pi|π", "pi", text)
    text = re.sub(r"\\cdot|\\times|×|·", "*", text)
    text = text.replace("{", "(").replace("}", ")").replace("^", "**")
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)
    text = re.sub(r"(?<=[\d)])\s*(?=[(a-z])", "*", text)  # implicit products: 2sqrt(3), 2pi, (1)(2)
    text = re.sub(r"(?<=pi)\s*(?=[(\d])", "*", text)
    return text.strip()


def _evaluate(text: str) -> float | None:
    expression = _latex_to_expression(text)
    if not expression or len(expression) > 200 or not _EXPRESSION_CHARS.fullmatch(expression):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)  # "1abc" warns before it fails
            tree = ast.parse(expression, mode="eval")
        value = _walk(tree.body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError, RecursionError):
        return None
    return value if value is not None and math.isfinite(value) else None


def _walk(node: ast.AST) -> float | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _walk(node.operand)
        return None if value is None else (-value if isinstance(node.op, ast.USub) else value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
        left, right = _walk(node.left), _walk(node.right)
        if left is None or right is None:
            return None
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 1e6):
            return None
        result = _BIN_OPS[type(node.op)](left, right)
        return result if isinstance(result, float) or isinstance(result, int) else None
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "sqrt"
            and len(node.args) == 1 and not node.keywords):
        value = _walk(node.args[0])
        return None if value is None or value < 0 else math.sqrt(value)
    return None
