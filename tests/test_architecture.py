"""Architecture: no module of ``ipguard_jax`` reaches into another module's private names.

A private name (one leading underscore, not a dunder) belongs to the module that defines it. A
private *module* (``models/_common.py``, ``cli/_common.py``, ``data/_folder.py``,
``_version.py``...) belongs to its package: the modules inside that package may import it and
its public names, nothing outside may. The scan reads the source (nothing is imported) and
lists, for every module under ``ipguard_jax/``, the private names it reaches on other
``ipguard_jax`` modules:

- ``from ipguard_jax.x import _y``, ``import ipguard_jax.x._y``;
- ``x._y`` on a name bound by an import of an ``ipguard_jax`` module or of a name defined in
  one (``from ipguard_jax.x import C`` then ``C._y``), at any depth (``x.C._y``).

A second, looser check flags ``obj._y`` on any other object when no ``_y`` is defined in the
module itself (``suspect._jit_apply`` on a suspect built elsewhere): a private attribute of a
class from another module.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ipguard_jax"

# Shims that exist only to keep old import paths working may re-export the private names that
# tests replace through them; nothing else may reach a private name of another module.
ALLOWED = {
    # ipguard_jax.io (old home of save/load/seal/unseal): tests monkeypatch io._write_text_atomic
    # and io._write_version, and io forwards the assignment to the implementing module.
    ("ipguard_jax.io", "ipguard_jax.storage.fingerprint_files._write_text_atomic"),
    ("ipguard_jax.io", "ipguard_jax.storage.fingerprint_files._write_version"),
}

# Private by spelling only: the documented API of typing.NamedTuple.
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_field_defaults", "_make"}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _crosses(importer: str, target: str) -> bool:
    """Whether ``importer`` reaching the dotted name ``target`` uses another module's private
    name (see the module docs for who owns what)."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if not _is_private(part):
            continue
        prefix = ".".join(parts[:i])
        if _is_module(f"{prefix}.{part}"):  # a private module: its package's own
            if importer == prefix or importer.startswith(prefix + "."):
                continue
            return True
        return importer != prefix  # a private name of the module ``prefix``
    return False


def private_reaches(source: str, module: str, is_package: bool = False) -> set[str]:
    """The dotted names of other modules' privates that ``source`` (module ``module``) reaches.

    Example: ``private_reaches("from ipguard_jax.verification import _x", "ipguard_jax.cli")``
    is ``{"ipguard_jax.verification._x"}``.
    """
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    bound: dict[str, str] = {}  # local name -> dotted ipguard_jax name it is bound to
    reached: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ipguard_jax":
                    reached.add(alias.name)
                    if alias.asname:
                        bound[alias.asname] = alias.name
                    else:
                        bound[alias.name.split(".")[0]] = "ipguard_jax"
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "ipguard_jax":
                continue
            for alias in node.names:
                reached.add(f"{base}.{alias.name}")
                bound[alias.asname or alias.name] = f"{base}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in bound:
                reached.add(".".join([bound[value.id], *reversed(chain)]))
    return {target for target in reached if _crosses(module, target)}


def foreign_private_attributes(source: str) -> set[tuple[int, str]]:
    """``(line, expression)`` of each ``obj._y`` in ``source`` where ``obj`` is neither
    ``self`` nor ``cls`` nor an imported name, and the module defines no ``_y`` itself."""
    tree = ast.parse(source)
    defined, imported = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            defined.add(node.attr)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            imported.update((a.asname or a.name).split(".")[0] for a in node.names)
    found = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
            continue
        if node.attr in defined or node.attr in NAMEDTUPLE_API:
            continue
        root = node.value
        while isinstance(root, ast.Attribute):
            root = root.value
        if isinstance(root, ast.Name) and root.id in {"self", "cls"} | imported:
            continue  # imported names are the first scan's
        found.add((node.lineno, ast.unparse(node)))
    return found


def _modules() -> list[tuple[str, Path]]:
    return [(_module_name(path), path) for path in sorted(PACKAGE.rglob("*.py"))]


def scan() -> dict[str, set[str]]:
    """For every module under ``ipguard_jax/``: the other modules' private names it reaches."""
    return {name: private_reaches(path.read_text(encoding="utf-8"), name,
                                  path.name == "__init__.py")
            for name, path in _modules()}


def _pairs(found: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(module, target) for module, targets in found.items() for target in targets}


def test_the_scan_sees_private_imports_and_attributes():
    assert private_reaches("from ipguard_jax.verification import _x, y", "ipguard_jax.cli") \
        == {"ipguard_jax.verification._x"}
    assert private_reaches("from ipguard_jax.models import _common\n"
                           "from ipguard_jax.data import _folder\n"
                           "_folder.CONSTANT, _common.f()",
                           "ipguard_jax.models.cnn") \
        == {"ipguard_jax.data._folder", "ipguard_jax.data._folder.CONSTANT"}
    assert private_reaches("import ipguard_jax.storage.sealed as s\ns._unseal(b'', 'p', 'w')",
                           "ipguard_jax.storage.fingerprint_files") \
        == {"ipguard_jax.storage.sealed._unseal"}
    assert private_reaches("from ipguard_jax.classifier import Classifier\n"
                           "Classifier._jit_apply", "ipguard_jax.verification") \
        == {"ipguard_jax.classifier.Classifier._jit_apply"}
    assert private_reaches("from . import _common\nfrom ._common import help_text",
                           "ipguard_jax.cli.verify") == set()
    assert private_reaches("from ipguard_jax._version import __version__",
                           "ipguard_jax.models.bundle") == set()
    assert foreign_private_attributes("def f(suspect):\n    return suspect._jit_apply\n") \
        == {(2, "suspect._jit_apply")}
    assert foreign_private_attributes("class A:\n    def _g(self): ...\n"
                                      "def f(a):\n    return a._g(), a._replace()\n") == set()


def test_no_module_reaches_another_modules_private_names():
    found = scan()
    unexpected = _pairs(found) - ALLOWED
    assert not unexpected, "private names of other modules:\n" + "\n".join(
        f"  {module}: {target}" for module, target in sorted(unexpected))


def test_every_allowed_private_re_export_is_still_needed():
    assert ALLOWED <= _pairs(scan()), f"stale entries: {sorted(ALLOWED - _pairs(scan()))}"


def test_no_private_attributes_of_objects_from_other_modules():
    found = {f"{name}:{line}: {text}"
             for name, path in _modules()
             for line, text in foreign_private_attributes(path.read_text(encoding="utf-8"))}
    assert not found, "private attributes of other modules' objects:\n  " + \
        "\n  ".join(sorted(found))
