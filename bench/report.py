"""Collects benchmark figures and prints them against the budgets of docs/architecture.md."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)

    def add(
        self,
        name: str,
        value: float,
        unit: str,
        *,
        at_least: float | None = None,
        at_most: float | None = None,
        note: str = "",
    ) -> None:
        target, met = "", None
        if at_least is not None:
            target, met = f">= {at_least:,.0f}", value >= at_least
        elif at_most is not None:
            target, met = f"<= {at_most:,.1f}", value <= at_most
        self.figures.append(Figure(name, value, unit, target, met, note))
        print(f"  {name}: {value:,.1f} {unit} {target} {note}", flush=True)

    def print(self) -> None:
        table = Table(title="leadlog bench", show_lines=False)
        for column in ("measure", "figure", "unit", "target", "ok", "note"):
            table.add_column(column)
        for f in self.figures:
            ok = "" if f.met is None else ("yes" if f.met else "NO")
            table.add_row(f.name, f"{f.value:,.1f}", f.unit, f.target, ok, f.note)
        Console(width=160).print(table)
