#!/usr/bin/env python3
"""The module graph of src/, derived from `crate::` and `super::` paths, checked against the
layers the README's Development section describes.

Fails (exit 1) on an import cycle between files, a cycle between folders, or a folder that
depends on one above it. `--print` lists every edge; `--largest N` the N longest functions.
Plain Python 3, no packages: `make lint` runs it before clippy.
"""
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

# Lower layers never import higher ones; units of one layer may depend on each other as long
# as there is no cycle. Root files are units of their own.
LAYERS = {
    "errors": 0,
    "pg": 1,
    "gucs": 2,
    "migration": 3,
    "schema": 3,
    "history": 4,
    "guard": 5,
    "backfill": 5,
    "apply": 5,
    "worker": 6,
    "inspect": 6,
    "window": 6,
    "watch": 5,
    "tests": 7,
    "lib": 7,
}

IDENT = r"[a-z_][a-z0-9_]*"


def modules() -> dict[tuple[str, ...], Path]:
    found = {}
    for f in SRC.rglob("*.rs"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] in ("mod", "lib"):
            parts = parts[:-1]
        found[tuple(parts)] = f
    return found


def split_top(items: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in items:
        depth += (ch == "{") - (ch == "}")
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [i for i in out if i]


def edges(mods: dict[tuple[str, ...], Path]) -> dict[tuple[str, ...], set[tuple[str, ...]]]:
    def resolve(path: list[str]) -> tuple[str, ...]:
        parts = tuple(path)
        while parts and parts not in mods:
            parts = parts[:-1]
        return parts

    graph = {}
    for m, f in mods.items():
        text = re.sub(r"//[^\n]*", "", f.read_text())
        deps = set()
        for g in re.finditer(r"crate::\{((?:[^{}]|\{[^{}]*\})*)\}", text):
            for item in split_top(g.group(1)):
                deps.add(resolve(item.split(" as ")[0].split("::")))
        for g in re.finditer(rf"crate::((?:{IDENT}::)*{IDENT})", text):
            deps.add(resolve(g.group(1).split("::")))
        parent = list(m[:-1])
        for g in re.finditer(rf"super::((?:{IDENT}::)*{IDENT})", text):
            deps.add(resolve(parent + g.group(1).split("::")))
        deps.discard(m)
        deps.discard(())
        graph[m] = deps
    return graph


def cycles(nodes, graph) -> list[list]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    advanced = True
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def unit(m: tuple[str, ...]) -> str:
    return m[0] if m else "lib"


def name(m: tuple[str, ...]) -> str:
    return "::".join(m) or "lib"


def largest(count: int) -> None:
    found = []
    for f in SRC.rglob("*.rs"):
        lines = f.read_text().splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"^(\s*)(?:pub(?:\([a-z]+\))? )?(?:unsafe )?(?:extern \"C-unwind\" )?fn (\w+)", line)
            if not m or line.rstrip().endswith(";"):
                continue
            indent = m.group(1)
            for j in range(i + 1, len(lines)):
                if lines[j] == indent + "}":
                    found.append((j - i + 1, f"{f.relative_to(SRC)}:{i + 1} {m.group(2)}"))
                    break
    for length, where in sorted(found, reverse=True)[:count]:
        print(f"{length:5} lines  {where}")


def main() -> int:
    if "--largest" in sys.argv:
        largest(int(sys.argv[sys.argv.index("--largest") + 1]))
        return 0
    mods = modules()
    graph = edges(mods)
    problems = []
    for comp in cycles(list(graph), graph):
        problems.append("import cycle between files: " + " <-> ".join(name(m) for m in comp))
    folders: dict[str, set[str]] = {}
    for m, deps in graph.items():
        for d in deps:
            a, b = unit(m), unit(d)
            if a == b:
                continue
            folders.setdefault(a, set()).add(b)
            if a not in LAYERS or b not in LAYERS:
                problems.append(f"{name(m)} -> {name(d)}: {a if a not in LAYERS else b} has no layer "
                                "in .ci/module_graph.py")
            elif LAYERS[b] > LAYERS[a]:
                problems.append(f"{name(m)} -> {name(d)}: {a} (layer {LAYERS[a]}) depends on "
                                f"{b} (layer {LAYERS[b]}) above it")
    for comp in cycles(list(folders), folders):
        problems.append("import cycle between folders: " + " <-> ".join(comp))
    if "--print" in sys.argv:
        for m in sorted(graph):
            print(f"{name(m)} -> {', '.join(sorted(name(d) for d in graph[m]))}")
    for p in problems:
        print(f"module graph: {p}", file=sys.stderr)
    if not problems:
        print(f"module graph: {len(graph)} modules, no cycle, every folder depends downward")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
