"""Both runtimes load the built-in model and agree: LiteRT first, tflite-runtime as fallback."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from appliance.inference.model import Settings, load_model
from appliance.inference.runtime import RuntimeUnavailableError, available_runtimes, find_runtime
from tests.inference.conftest import MANIFEST

LEGACY_PYTHON = Path(__file__).parents[2] / ".venv-legacy" / "bin" / "python"
TEXTS = ["How hot is the CPU?", "blink your led", "what is the capital of Peru"]

EMBED_WITH_LEGACY = """
import json, sys
from pathlib import Path
from appliance.inference.model import Settings, load_model
from appliance.inference.runtime import find_runtime
import numpy
model = load_model(Path(sys.argv[1]), find_runtime("tflite-runtime"), Settings())
print(json.dumps({"numpy": numpy.__version__, "runtime": model.runtime.version,
                  "vectors": model.embed(json.loads(sys.argv[2])).tolist()}))
"""


def test_auto_prefers_litert() -> None:
    assert find_runtime().name == "ai-edge-litert"
    assert available_runtimes()[0].name == "ai-edge-litert"


def test_asking_for_a_missing_runtime_says_how_to_install_it() -> None:
    with pytest.raises(RuntimeUnavailableError, match="numpy<2"):
        find_runtime("tflite-runtime")


@pytest.mark.skipif(
    not LEGACY_PYTHON.exists(),
    reason="no .venv-legacy (tflite-runtime has "
    "wheels only for Python <= 3.11; `make test` builds it there)",
)
def test_tflite_runtime_with_numpy_1_agrees_with_litert() -> None:
    litert = load_model(MANIFEST, find_runtime("ai-edge-litert"), Settings()).embed(TEXTS)
    result = subprocess.run(
        [str(LEGACY_PYTHON), "-c", EMBED_WITH_LEGACY, str(MANIFEST), json.dumps(TEXTS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    legacy = json.loads(result.stdout)
    assert legacy["numpy"].startswith("1.") and legacy["runtime"] == "2.14.0"
    vectors = np.asarray(legacy["vectors"], dtype=np.float32)
    cosines = (vectors * litert).sum(axis=1)
    assert cosines.min() > 0.999, cosines
