"""Importing `openai` without building the hundreds of models of `openai.types` it never uses.

Why: `import openai` runs `openai.types/__init__.py`, and that of each of its subpackages, which
import every request and response model of every endpoint the SDK knows (~650 pydantic classes:
assistants, audio, files, responses, ...). Each class costs pydantic ~1 ms to create, even with the
SDK's `defer_build`; that is ~60 % of the reply function's import at INIT, so of every cold start a
participant waits for (docs/benchmarks.md, "Cold starts"). The reply function uses the client's
`post` and reads chunks as plain JSON (openai_model.py): it needs none of those classes.

What this does: `install()` puts a finder on `sys.meta_path` that loads the *packages* under
`openai.types` (their `__init__.py`, which only re-exports) on first use of a name they export,
not at import. Their modules load as before, when something imports them: the SDK's own modules
import the few models they need from those modules directly. A name read from a package
(`openai.types.ChatModel`, `from openai.types.chat import ChatCompletion`) loads the package's
`__init__.py` then, in full, so every name resolves to the very class a plain import gives.
Nothing else of the SDK changes. With a newer SDK that reads its packages' names at import, the
packages simply load at import again: slower, never wrong (tests/ws_handlers/adapters/
test_lazy_types.py pins both the saving and the equivalence).
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
    """A package whose `__init__.py` runs at the first name asked of it that is not a submodule."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # dunders (__file__, __all__ before init...) are what they are
            raise AttributeError(name)
        try:  # a submodule: imported on its own, as `from package import submodule` would
            return importlib.import_module(f"{self.__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{self.__name__}.{name}":
                raise
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
