"""Named dimensions: `d_model`, `4 * d_model`, `d_model // n_heads` evaluated safely (no eval)."""

from __future__ import annotations

import ast
import difflib
import operator

_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Div: operator.truediv,
}


MAX_EXPR = 200


class DimError(ValueError):
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def evaluate(expr: int | str, dims: dict[str, int]) -> int:
    """The positive integer a size expression denotes, or `DimError`."""
    if isinstance(expr, bool):
        raise DimError(f"`{expr}` is not a size")
    if isinstance(expr, int):
        value = expr
    else:
        if len(expr) > MAX_EXPR:  # bounds the parser's and the evaluator's recursion
            raise DimError(f"the size expression `{expr[:24]}...` is {len(expr)} characters long",
                           f"size expressions are at most {MAX_EXPR} characters")  # fmt: skip
        try:
            tree = ast.parse(expr.strip(), mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            raise DimError(f"`{expr}` is not a size expression") from None
        try:
            value = _eval(tree.body, dims, expr)
        except (RecursionError, OverflowError):
            raise DimError(f"`{expr}` is too large or too deeply nested to be a size") from None
    if isinstance(value, float):
        if not value.is_integer():
            raise DimError(f"`{expr}` is {value}, not a whole number", "use `//` or other dims")
        value = int(value)
    if value <= 0:
        raise DimError(f"`{expr}` is {value}; sizes must be positive")
    return value


def _eval(node: ast.AST, dims: dict[str, int], expr: str) -> int | float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in dims:
            close = difflib.get_close_matches(node.id, list(dims), n=1)
            hint = f"did you mean `{close[0]}`?" if close else "declare it under `dims:`"
            where = "" if expr.strip() == node.id else f" in `{expr}`"
            raise DimError(f"unknown dim `{node.id}`{where}", hint)
        return dims[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(node.left, dims, expr), _eval(node.right, dims, expr)
        if isinstance(node.op, (ast.FloorDiv, ast.Div)) and right == 0:
            raise DimError(f"division by zero in `{expr}`")
        return _OPS[type(node.op)](left, right)
    raise DimError(f"`{expr}` is not a size expression", "use integers, dims and + - * / //")
