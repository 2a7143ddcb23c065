"""Errors a user can cause, and how they print.

`UserError` is anything the command line reports as one line without a traceback. `SpecError`
carries every `Diagnostic` found in a spec at once, each at its `file:line:col`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class UserError(Exception):
    """A mistake in the user's input (a file, a flag, a spec): printed, never a traceback."""


class CompileError(UserError):
    """A valid spec that uses a combination the compiler does not lower (yet)."""


@dataclass(frozen=True)
class Position:
    file: str
    line: int  # 1-based
    col: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    code: str  # the check's name, e.g. "flow-cycle", "unknown-key"
    message: str
    pos: Position | None
    hint: str | None = None
    severity: str = "error"  # or "warning"

    def __str__(self) -> str:
        where = f"{self.pos}: " if self.pos else ""
        text = f"{where}{self.severity}[{self.code}]: {self.message}"
        return text + (f" (hint: {self.hint})" if self.hint else "")


@dataclass
class SpecError(UserError):
    """A spec that is not well-formed; `diagnostics` holds all errors (and warnings) found."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.__str__())

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    def __str__(self) -> str:
        n = len(self.errors)
        head = f"{n} error{'s' if n != 1 else ''} in spec"
        return head + "\n" + "\n".join(f"  {d}" for d in self.diagnostics)
