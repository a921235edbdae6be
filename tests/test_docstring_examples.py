"""Issue 19 point 5: every public function, class and method of the library and the built-in analyses has a
docstring that ends in a usage example — a line ``Example: ``code`` `` (the house style, several such lines allowed)
or a ``>>>`` doctest line. Checked on the source with ``ast`` (nothing is imported), so a wrong example fails here,
not in a user's notebook: each example's code must parse, must name what it documents, and a keyword it passes to the
documented function must be one of that function's parameters.

Covered: public (no leading ``_``) module-level functions and classes of every public module under ``workbench/`` and
``analyses/`` (a module or package whose path has a ``_``-component other than ``__init__`` is private), and the public
methods of public classes — except properties, dunders, and a method that overrides a same-named method of a base
class defined in this repository (it inherits that documentation). ``workbench/sae.py`` and ``workbench/sae/`` are
left out for now (being rewritten; their docstrings come with that rewrite)."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("workbench", "analyses")
EXAMPLE = re.compile(r"^Example:\s*``(.+?)``")
PROPERTY_DECORATORS = {"property", "cached_property"}


@dataclass
class ClassInfo:
    methods: set[str] = field(default_factory=set)
    bases: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)  # annotated class-level names (dataclass / NamedTuple fields)
    dataclass: bool = False


def _name(node: ast.AST) -> str:
    """Simple name of a base / decorator / call target: ``a.b.C`` -> ``C``, ``C[int]`` -> ``C``, ``f(x)`` -> ``f``."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""


def _public_module(rel: str) -> bool:
    parts = rel[:-3].split("/")
    return not any(p.startswith("_") and p != "__init__" for p in parts)


def _is_property(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for dec in fn.decorator_list:
        if _name(dec) in PROPERTY_DECORATORS:
            return True
        if isinstance(dec, ast.Attribute) and dec.attr in {"setter", "getter", "deleter"}:
            return True
    return False


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str] | None:
    """Names a call may pass by keyword, or None when the function takes ``**kwargs``."""
    if fn.args.kwarg is not None:
        return None
    return {a.arg for a in fn.args.args + fn.args.kwonlyargs}


def examples(doc: str) -> tuple[list[str], list[str]]:
    """(code of every example in ``doc``, problems): ``Example: ``code`` `` lines and ``>>>`` lines (with their
    ``...`` continuation lines)."""
    codes, problems = [], []
    lines = doc.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("Example:"):
            m = EXAMPLE.match(line)
            if m:
                codes.append(m.group(1))
            else:
                problems.append(f"'Example:' line without ``code``: {line!r}")
        elif line.startswith(">>>"):
            code = [line[3:].removeprefix(" ")]
            while i + 1 < len(lines) and lines[i + 1].strip().startswith("..."):
                i += 1
                code.append(lines[i].strip()[3:].removeprefix(" "))
            codes.append("\n".join(code))
        i += 1
    return codes, problems


def _mentions(tree: ast.AST, names: set[str]) -> bool:
    return any((isinstance(n, ast.Name) and n.id in names) or (isinstance(n, ast.Attribute) and n.attr in names)
               for n in ast.walk(tree))


def _bad_keywords(tree: ast.AST, name: str, params: set[str] | None) -> list[str]:
    if params is None:
        return []
    return [kw.arg for n in ast.walk(tree) if isinstance(n, ast.Call) and _name(n.func) == name
            for kw in n.keywords if kw.arg is not None and kw.arg not in params]


def check_example_docstring(doc: str | None, name: str, names: set[str], params: set[str] | None) -> list[str]:
    """Problems of one docstring: missing, no example, an example that does not parse, does not mention any of
    ``names``, or calls ``name`` with a keyword outside ``params`` (None: anything goes)."""
    if not doc:
        return ["no docstring"]
    codes, problems = examples(doc)
    if not codes and not problems:
        return ["docstring has no 'Example: ``code``' or '>>>' line"]
    for code in codes:
        try:
            tree = ast.parse(code)
        except SyntaxError as err:
            problems.append(f"example does not parse ({err.msg}): {code!r}")
            continue
        if not _mentions(tree, names):
            problems.append(f"example does not mention {name}: {code!r}")
        bad = _bad_keywords(tree, name, params)
        if bad:
            problems.append(f"example calls {name} with keyword(s) {bad} it does not take: {code!r}")
    return problems


def parse_classes(trees: dict[str, ast.Module]) -> dict[str, ClassInfo]:
    """Every class of the repository by simple name (same-named classes merged): methods, bases, fields."""
    out: dict[str, ClassInfo] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                info = out.setdefault(node.name, ClassInfo())
                info.bases |= {_name(b) for b in node.bases} - {""}
                info.dataclass |= any(_name(d) == "dataclass" for d in node.decorator_list)
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        info.methods.add(item.name)
                    elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        info.fields.add(item.target.id)
    return out


def _ancestors(name: str, classes: dict[str, ClassInfo]) -> list[ClassInfo]:
    seen, todo, out = {name}, list(classes[name].bases) if name in classes else [], []
    while todo:
        base = todo.pop()
        if base in seen or base not in classes:  # outside the repository (object, Protocol, Exception...): nothing
            continue
        seen.add(base)
        out.append(classes[base])
        todo += classes[base].bases
    return out


def _class_params(node: ast.ClassDef, classes: dict[str, ClassInfo]) -> set[str] | None:
    """Keywords ``Cls(...)`` accepts when known from the source: an explicit ``__init__``, or the annotated fields of
    a dataclass (its own and its repository bases'); None when unknown."""
    for item in node.body:
        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
            return _params(item)
    info = classes[node.name]
    if info.dataclass:
        return info.fields.union(*(a.fields for a in _ancestors(node.name, classes)))
    return None


def check_sources(sources: dict[str, str]) -> tuple[list[str], dict[str, int]]:
    """Offences as ``path:line name: problem`` over ``{relative path: source}``, and how many names of each kind
    (functions, classes, methods) were checked."""
    trees = {rel: ast.parse(src, filename=rel) for rel, src in sources.items()}
    classes = parse_classes(trees)
    offences, counts = [], {"functions": 0, "classes": 0, "methods": 0}
    for rel, tree in sorted(trees.items()):
        if not _public_module(rel):
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not node.name.startswith("_"):
                counts["functions"] += 1
                problems = check_example_docstring(ast.get_docstring(node), node.name, {node.name}, _params(node))
                offences += [f"{rel}:{node.lineno} {node.name}: {p}" for p in problems]
            elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                counts["classes"] += 1
                inherited = set().union(*(a.methods for a in _ancestors(node.name, classes)))
                methods = [m for m in node.body if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef)
                           and not m.name.startswith("_") and not _is_property(m) and m.name not in inherited]
                public = {m.name for m in node.body if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef)
                          and not m.name.startswith("_")}
                problems = check_example_docstring(ast.get_docstring(node), node.name, {node.name} | public,
                                                   _class_params(node, classes))
                offences += [f"{rel}:{node.lineno} {node.name}: {p}" for p in problems]
                for m in methods:
                    counts["methods"] += 1
                    problems = check_example_docstring(ast.get_docstring(m), m.name, {m.name}, _params(m))
                    offences += [f"{rel}:{m.lineno} {node.name}.{m.name}: {p}" for p in problems]
    return offences, counts


def repository_sources() -> dict[str, str]:
    out = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            out[rel] = path.read_text(encoding="utf-8")
    return out


def test_every_public_name_has_a_docstring_with_a_true_example():
    offences, counts = check_sources(repository_sources())
    assert counts["functions"] > 100 and counts["classes"] > 50, counts  # the walk found the code
    assert not offences, f"{len(offences)} public names lack a correct example:\n" + "\n".join(offences)


# The checker must be able to fail.

def test_the_checker_reports_a_missing_docstring_and_a_missing_example():
    src = 'def f(x):\n    return x\n\n\ndef g(x):\n    """Does g."""\n\n\nclass C:\n    """A C.\n\n' \
          '    Example: ``C().run()``"""\n\n    def run(self):\n        """Runs."""\n'
    offences, counts = check_sources({"pkg/mod.py": src})
    assert counts == {"functions": 2, "classes": 1, "methods": 1}
    assert [o.split(":")[0] + ":" + o.split(":")[1].split()[0] + " " + o.split()[1].rstrip(":") for o in offences] \
        == ["pkg/mod.py:1 f", "pkg/mod.py:5 g", "pkg/mod.py:14 C.run"]


def test_the_checker_reports_a_keyword_the_signature_lacks_and_bad_code():
    src = 'def f(x, *, scale=1):\n    """Scales.\n\n    Example: ``f(2, factor=3)``"""\n\n\n' \
          'def g(x):\n    """G.\n\n    Example: ``g(1``\n    Example: ``h(1)``"""\n'
    offences, _ = check_sources({"pkg/mod.py": src})
    assert len(offences) == 3, offences
    assert offences[0].startswith("pkg/mod.py:1 f:") and "['factor']" in offences[0]
    assert offences[1].startswith("pkg/mod.py:7 g:") and "does not parse" in offences[1]
    assert offences[2].startswith("pkg/mod.py:7 g:") and "does not mention g" in offences[2]


def test_the_checker_accepts_doctests_kwargs_overrides_properties_and_private_modules():
    src = ('class Base:\n    """B.\n\n    >>> Base().plot()\n    """\n\n    def plot(self):\n        """Plots.\n\n'
           '        Example: ``b.plot()``"""\n\n\nclass Child(Base):\n    """Child.\n\n    Example: ``Child()``"""\n\n'
           '    def plot(self):\n        pass\n\n    @property\n    def size(self):\n        return 1\n\n'
           '    def __len__(self):\n        return 1\n\n\ndef k(**kw):\n    """K.\n\n    Example: ``k(any=1)``"""\n')
    offences, counts = check_sources({"pkg/mod.py": src, "pkg/_private.py": "def f():\n    pass\n"})
    assert offences == [] and counts == {"functions": 1, "classes": 2, "methods": 1}
