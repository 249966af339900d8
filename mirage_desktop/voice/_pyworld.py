"""Import pyworld even where its ``__init__`` cannot run.

pyworld 0.3.5's ``__init__`` does ``import pkg_resources`` only to read its version; setuptools
>= 81 no longer ships ``pkg_resources``, so ``import pyworld`` fails although the compiled
extension is fine. We try the normal import and fall back to loading the extension directly.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

_module: ModuleType | None = None


def load() -> ModuleType:
    global _module
    if _module is not None:
        return _module
    try:
        import pyworld  # noqa: F401

        _module = pyworld
        return _module
    except ModuleNotFoundError as exc:
        if exc.name != "pkg_resources":
            from ..errors import MirageError

            raise MirageError("pyworld is not installed", "pip install pyworld") from exc
    spec = importlib.util.find_spec("pyworld")
    if spec is None or not spec.submodule_search_locations:
        from ..errors import MirageError

        raise MirageError("pyworld is not installed", "pip install pyworld")
    import glob
    import os

    for folder in spec.submodule_search_locations:
        for path in glob.glob(os.path.join(folder, "pyworld*.so")) + glob.glob(os.path.join(folder, "pyworld*.pyd")):
            ext_spec = importlib.util.spec_from_file_location("pyworld.pyworld", path)
            mod = importlib.util.module_from_spec(ext_spec)
            ext_spec.loader.exec_module(mod)
            sys.modules.setdefault("pyworld.pyworld", mod)
            _module = mod
            return mod
    from ..errors import MirageError

    raise MirageError("pyworld's compiled extension was not found", "pip install --force-reinstall pyworld")
