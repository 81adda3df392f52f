import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.inference.runtime import Runtime, find_runtime

MODELS = Path(__file__).parents[2] / "models" / "minilm"
MANIFEST = MODELS / "minilm-l6-v2-int8.json"


@pytest.fixture(scope="session")
def runtime() -> Runtime:
    return find_runtime()


@pytest.fixture
def model_copy(tmp_path: Path) -> Callable[[], Path]:
    """A copy of the built-in model in a scratch directory, to alter."""

    def copy() -> Path:
        target = tmp_path / "model"
        shutil.copytree(
            MODELS, target, ignore=shutil.ignore_patterns("*.py", "sentences", "*report*")
        )
        return target / MANIFEST.name

    return copy
