"""The package's import graph follows the layer order written in docs/DESIGN.md.

Every module's imports are read with ``ast`` (top-level imports, imports inside functions and
``importlib.import_module("nnunet_mmpretrain...")`` calls with a literal name). The test fails on
any import cycle between modules and on any import against the layer order, naming the import.
Run as a script (``python tests/test_layers.py``) to print every offending import at once.
"""
from __future__ import annotations

import ast
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("nnunet_mmpretrain", "nnunet_mmpretrain_ext")

#: lower never imports higher; the same list as the "Layers" section of docs/DESIGN.md
LAYERS: list[tuple[str, ...]] = [
    ("modalities", "labels", "io_utils", "parallel"),
    ("geometry", "content_hash", "subjects"),
    ("corpus", "pretrain", "planning"),
    ("transfer",),
    ("training",),
    ("benchmark", "classification", "conversion", "synthetic"),
    ("cli", "demo"),
    ("nnunet_mmpretrain_ext",),
]

#: imports between different parts of the same layer that are allowed (importer, imported);
#: any other import across parts of one layer fails (DESIGN.md lists the same pairs)
SAME_LAYER = {
    ("corpus", "planning"),
    ("benchmark", "classification"),
    ("synthetic", "conversion"),
    ("benchmark", "synthetic"),
}


def _part(module: str) -> str:
    """The layer part of a module: ``nnunet_mmpretrain.corpus.validate`` -> ``corpus``."""
    parts = module.split(".")
    if parts[0] == "nnunet_mmpretrain_ext":
        return "nnunet_mmpretrain_ext"
    return parts[1] if len(parts) > 1 else "modalities"  # the package's __init__ is ground


def _layer(part: str) -> int:
    for i, names in enumerate(LAYERS):
        if part in names:
            return i
    raise AssertionError(f"{part!r} is in no layer of tests/test_layers.py LAYERS (and docs/DESIGN.md)")


def modules() -> dict[str, str]:
    """Dotted module name -> file path, for every module of the package and the shim."""
    out = {}
    for pkg in PACKAGES:
        for root, _, files in os.walk(os.path.join(REPO, pkg)):
            for f in sorted(files):
                if not f.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(root, f), REPO)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = os.path.join(root, f)
    return out


def _resolve(name: str, mods: dict[str, str]) -> str | None:
    """The module an imported dotted name refers to (the longest known module prefix)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        cand = ".".join(parts[:n])
        if cand in mods:
            return cand
    return None


def imports(module: str, path: str, mods: dict[str, str]) -> list[tuple[str, int]]:
    """(imported module, line) for every import of the package's own modules in ``path``."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    is_pkg = path.endswith("__init__.py")
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_pkg else anchor[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import sub`` imports the submodule when there is one
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            names = [node.args[0].value]
        for name in names:
            target = _resolve(name, mods) if name.split(".")[0] in PACKAGES else None
            if target and target != module and (target, node.lineno) not in found:
                found.append((target, node.lineno))
    return found


def graph() -> dict[str, list[tuple[str, int]]]:
    mods = modules()
    return {m: imports(m, p, mods) for m, p in mods.items()}


def _where(module: str, line: int) -> str:
    return f"{modules()[module][len(REPO) + 1:]}:{line}"


def upward_imports() -> list[str]:
    """One line per import against the layer order (or across same-layer parts not allowed)."""
    bad = []
    for src, targets in graph().items():
        for dst, line in targets:
            ps, pd = _part(src), _part(dst)
            ls, ld = _layer(ps) + 1, _layer(pd) + 1          # numbered from 1 as in DESIGN.md
            if ld > ls:
                bad.append(f"{_where(src, line)}: {src} (layer {ls}, {ps}) imports {dst} (layer {ld}, {pd})")
            elif ld == ls and ps != pd and (ps, pd) not in SAME_LAYER:
                bad.append(f"{_where(src, line)}: {src} imports {dst}: same layer {ls}, "
                           f"{ps} -> {pd} is not an allowed same-layer import")
    return bad


def cycles() -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    g = {m: sorted({d for d, _ in t}) for m, t in graph().items()}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def _cycle_imports(comp: list[str]) -> list[str]:
    inside = set(comp)
    return [f"{_where(s, line)}: {s} imports {d}" for s in comp for d, line in graph()[s] if d in inside]


def test_no_import_cycles():
    found = cycles()
    assert not found, "import cycles:\n" + "\n".join(
        "cycle between " + ", ".join(c) + ":\n  " + "\n  ".join(_cycle_imports(c)) for c in found)


def test_no_import_against_the_layer_order():
    bad = upward_imports()
    assert not bad, "imports against the layer order (docs/DESIGN.md, Layers):\n" + "\n".join(bad)


def test_design_md_states_the_same_layers():
    """docs/DESIGN.md's layer list is the one this test enforces."""
    with open(os.path.join(REPO, "docs", "DESIGN.md"), encoding="utf-8") as f:
        text = f.read()
    rows = re.findall(r"^\s*(\d+)\. (.+)$", text.split("## Layers", 1)[1].split("\n## ", 1)[0], re.M)
    written = [tuple(re.findall(r"`([A-Za-z_]+)`", row)) for _, row in rows]
    assert written == LAYERS, f"docs/DESIGN.md lists {written}, tests/test_layers.py {LAYERS}"
    pairs = set(re.findall(r"`([a-z_]+)` may import `([a-z_]+)`", text))
    assert pairs == SAME_LAYER, f"docs/DESIGN.md allows {sorted(pairs)}, tests/test_layers.py {sorted(SAME_LAYER)}"


def test_the_checker_sees_function_level_and_importlib_imports(tmp_path):
    """A checker that missed imports inside functions or through importlib could never fail."""
    mods = {"nnunet_mmpretrain.transfer.x": "", "nnunet_mmpretrain.training.pretrain": "",
            "nnunet_mmpretrain.training": "", "nnunet_mmpretrain.cli.y": ""}
    src = tmp_path / "x.py"
    src.write_text("import importlib\n"
                   "def f():\n    from nnunet_mmpretrain.training import pretrain\n"
                   "def g():\n    return importlib.import_module('nnunet_mmpretrain.cli.y')\n")
    got = imports("nnunet_mmpretrain.transfer.x", str(src), mods)
    assert got == [("nnunet_mmpretrain.training.pretrain", 3), ("nnunet_mmpretrain.cli.y", 5)]


if __name__ == "__main__":
    for c in cycles():
        print("CYCLE", c)
        print("  " + "\n  ".join(_cycle_imports(c)))
    print("\n".join(upward_imports()))
