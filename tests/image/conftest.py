"""Loaders for the image build's scripts, which are files to run, not packages to import."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).parents[2]
OVERLAYS = REPO / "overlays"


def load_script(path: Path, name: str) -> ModuleType:
    """Import a script by path (with or without a .py suffix) as module `name`."""
    if name in sys.modules:
        return sys.modules[name]
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
