"""Draw the package-level import graph, one row per layer of the import contract in pyproject.toml.

``make import-graph`` runs it and renders ``docs/import-graph.svg`` with Graphviz. An arrow that points up
(against the contract) is drawn red; there should be none, and ``make lint`` fails if there is.
"""

from __future__ import annotations

import itertools
import re
import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent


def layers() -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")
    return [[name.strip() for name in re.split(r"[|:]", row)] for row in contract["layers"]]


def unit_of(module: str, units: set[str]) -> str | None:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in units:
            return candidate
    return None


def dot() -> str:
    rows = layers()
    rank = {unit: index for index, row in enumerate(rows) for unit in row}
    graph = grimp.build_graph("appliance", include_external_packages=False)
    edges: dict[tuple[str, str], int] = {}
    for module in graph.modules:
        source = unit_of(module, set(rank))
        for imported in graph.find_modules_directly_imported_by(module):
            target = unit_of(imported, set(rank))
            if source and target and source != target:
                edges[source, target] = edges.get((source, target), 0) + 1
    lines = [
        "digraph imports {",
        '  graph [rankdir=TB, newrank=true, concentrate=true, nodesep=0.3, ranksep=0.35, fontname="Helvetica",'
        ' label="appliance: imports between packages (rows = layers; arrows point at what is imported)"];',
        '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica", fontsize=11];',
        '  edge [color="#8899aa", arrowsize=0.5];',
    ]
    for row in rows:
        names = " ".join(f'"{unit.removeprefix("appliance.")}"' for unit in row)
        lines.append(f"  {{ rank=same; {names} }}")
    for upper, lower in itertools.pairwise(rows):  # invisible spine: the rows stay in contract order
        lines.append(
            f'  "{upper[0].removeprefix("appliance.")}" -> "{lower[0].removeprefix("appliance.")}" [style=invis];'
        )
    for (source, target), count in sorted(edges.items()):
        style = ', color="red", penwidth=2, constraint=false' if rank[target] < rank[source] else ""
        lines.append(
            f'  "{source.removeprefix("appliance.")}" -> "{target.removeprefix("appliance.")}"'
            f' [tooltip="{count} imports"{style}];'
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(dot())
