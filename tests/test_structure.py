"""The module graph is a tree: library modules import each other at the top only (no import inside a function
to dodge a cycle), never a command-line tool, and never edit sys.path; tools import only the library."""

import ast
import os

from conftest import ROOT

TOOLS = {"bm25_train_data", "mine_negatives", "download_data", "convert_dpr_checkpoint"}
UTILS = os.path.join(ROOT, "utils")


def imports(path):
    """(module names imported at the top level, those imported inside a function or class, source text)."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    tree, top, nested = ast.parse(source), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            (
                top
                if node in tree.body
                or any(node in getattr(n, "body", []) for n in tree.body if isinstance(n, (ast.If, ast.Try)))
                else nested
            ).update(names)
    return top, nested, source


def test_library_imports_form_a_tree_and_tools_import_only_the_library():
    graph = {}
    for name in sorted(f[:-3] for f in os.listdir(UTILS) if f.endswith(".py") and f != "__init__.py"):
        top, nested, source = imports(os.path.join(UTILS, name + ".py"))
        assert not {m for m in nested if m and m.startswith("utils")}, (
            f"{name}: a function-level utils import"
        )
        used = {m.split(".")[1] for m in top if m and m.startswith("utils.")}
        if name not in TOOLS:
            assert not used & TOOLS, f"library module {name} imports a tool"
            assert "sys.path" not in source, f"library module {name} edits sys.path"
        else:
            assert not used & TOOLS, f"tool {name} imports another tool"
        graph[name] = used
    done, visiting = set(), set()

    def visit(name):  # depth-first: a module met again while its own imports are open closes a cycle
        assert name not in visiting, f"import cycle through {name}"
        if name not in done:
            visiting.add(name)
            for dep in graph.get(name, ()):
                visit(dep)
            visiting.discard(name)
            done.add(name)

    for name in graph:
        visit(name)
