"""Importing `openai` without building the hundreds of models of `openai.types` it never uses.

Why: `import openai` runs `openai.types/__init__.py`, and that of each of its subpackages, which
import every request and response model of every endpoint the SDK knows (~650 pydantic classes:
assistants, audio, files, responses, ...). Each class costs pydantic ~1 ms to create, even with the
SDK's `defer_build`; that was about half of the reply function's import at INIT, so of every cold start a
participant waits for (docs/benchmarks.md, "Phase 5"). The reply function uses the client's
`post` and reads chunks as plain JSON (openai_model.py): it needs none of those classes.

What this does: `install()` puts a finder on `sys.meta_path` that defers the `__init__.py` of the
*packages* under `openai.types` (which only re-export their modules' names). Their modules load as
before, when something imports them. A name read from a package (`from openai.types.chat import
ChatCompletionFunctionToolParam`, as the SDK's own `lib/_tools.py` does at import) is read from the
one module its `from .module import Name as Name` line names; a package whose `__init__.py` holds
anything else, a name it does not re-export that way, or `dir()`, runs the `__init__.py` in full.
Either way every name resolves to the very object a plain import gives. Nothing else of the SDK
changes. With a newer SDK that reads whole packages at import, they simply load at import again:
slower, never wrong (tests/ws_handlers/adapters/test_lazy_types.py pins both the saving and the
equivalence, name by name).

Threads: a package's `__init__.py` runs once, under a lock; a name read meanwhile from another
thread waits for it. On Lambda the handler's one thread imports everything at INIT.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import threading
import types
from collections.abc import Sequence
from typing import Any

#: The packages whose `__init__.py` waits for first use: this one and all beneath it.
PACKAGE = "openai.types"

_lock = threading.RLock()  # one thread runs a package's __init__; others wait for its names


class _LazyPackage(types.ModuleType):
    """A package whose `__init__.py` runs at the first name asked of it that is neither a submodule
    nor one of its plain re-exports (those are read from their own module)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # dunders (__file__, __all__ before init...) are what they are
            raise AttributeError(name)
        try:  # a submodule: imported on its own, as `from package import submodule` would
            return importlib.import_module(f"{self.__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{self.__name__}.{name}":
                raise
        if (source := self._reexports().get(name)) is not None:  # from the one module that has it
            module, original = source
            value = getattr(importlib.import_module(module, self.__name__), original)
            setattr(self, name, value)
            return value
        self._initialise()
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}") from None

    def __dir__(self) -> list[str]:
        self._initialise()  # all the names, as after a plain import
        return sorted(self.__dict__)

    def _initialise(self) -> None:
        with _lock:
            loader = self.__dict__.pop("_lazy_init", None)
            if loader is not None:
                loader.exec_module(self)
                self.__dict__.pop("_lazy_exports", None)

    def _reexports(self) -> dict[str, tuple[str, str]]:
        """What the package's `__init__.py` re-exports: name -> (relative module, name there), when
        it holds nothing but `from .module import Name as Name` (the SDK's generated packages), so
        a name is read from its own module without building the package's others. Empty for any
        other `__init__.py`, or once it has run."""
        if "_lazy_init" not in self.__dict__:
            return {}
        exports = self.__dict__.get("_lazy_exports")
        if exports is None:
            exports = self.__dict__["_lazy_exports"] = _reexports_in(self.__spec__.origin if self.__spec__ else None)
        return exports


def _reexports_in(path: str | None) -> dict[str, tuple[str, str]]:
    import ast  # only for a package a name is read from (already loaded by pydantic's inspect)

    try:
        with open(path or "", "rb") as source:
            tree = ast.parse(source.read())
    except (OSError, SyntaxError, ValueError):
        return {}
    exports: dict[str, tuple[str, str]] = {}
    for statement in tree.body:
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue  # a docstring
        if not isinstance(statement, ast.ImportFrom):
            return {}  # anything else may bind or rebind a name: the whole file runs instead
        if statement.module == "__future__" and statement.level == 0:
            continue
        if statement.level == 0 or any(alias.name == "*" for alias in statement.names):
            return {}
        module = "." * statement.level + (statement.module or "")
        for alias in statement.names:
            exports[alias.asname or alias.name] = (module, alias.name)
    return exports


class _DeferredInit:
    """The loader of a package under PACKAGE: makes it a _LazyPackage, keeps the real loader for later.
    (Loaders and finders are duck-typed; importlib.abc alone would add ~20 ms to the import.)"""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _LazyPackage(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__dict__["_lazy_init"] = self._loader  # run by the first name asked of the package


class _Finder:
    def find_spec(self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != PACKAGE and not fullname.startswith(PACKAGE + "."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or spec.submodule_search_locations is None:
            return spec  # a module (or nothing): loaded as usual
        spec.loader = _DeferredInit(spec.loader)
        return spec


def install() -> None:
    """Defer the packages' `__init__.py` from now on in this process (idempotent). No effect on
    those already imported."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
