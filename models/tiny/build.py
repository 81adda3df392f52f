#!/usr/bin/env python3
"""Build a tiny full-integer text encoder whose tensors are quantised at the edges.

A test fixture, not a useful model: it exists so the engine's quantise-in / dequantise-out
path runs against a real int8 TFLite file. input_ids int32 [1, 16] (padded); attention_mask is declared
float and becomes an int8 input with its own scale and zero point; the output embedding is int8
with its own scale and zero point. Deterministic weights (seeded), so rebuilding changes nothing.

    .venv-build/bin/python models/tiny/build.py models/minilm/tokenizer.json models/tiny
"""

import hashlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf
from tokenizers import Tokenizer

VOCAB, DIM, OUT, MAX_TOKENS = 30522, 16, 8, 16
NAME = "tiny-int8-io"
GOLDEN = ["hello there", "how hot is the cpu", "restart the telegram adapter"]
CALIBRATION = GOLDEN + ["which model do you run", "any alerts today", "thanks a lot",
                        "what is your ip address", "blink your led please", "banana bread"]


def weights():
    rng = np.random.default_rng(7)
    return (rng.normal(0, 1, (VOCAB, DIM)).astype(np.float32),
            rng.normal(0, 0.5, (DIM, OUT)).astype(np.float32))


def reference(table, dense, ids, mask):
    """Float reference: masked mean of embeddings, dense, tanh."""
    rows = table[ids] * mask[:, None]
    return np.tanh((rows.sum(0) / max(mask.sum(), 1.0)) @ dense)


def main():
    tokenizer_path, out = sys.argv[1:3]
    tok = Tokenizer.from_file(tokenizer_path)
    tok.enable_padding(length=MAX_TOKENS)  # a fixed length: the engine's padded path
    tok.enable_truncation(MAX_TOKENS)
    table, dense = weights()
    t_table, t_dense = tf.constant(table), tf.constant(dense)

    @tf.function(input_signature=[tf.TensorSpec([1, MAX_TOKENS], tf.int32, name="input_ids"),
                                  tf.TensorSpec([1, MAX_TOKENS], tf.float32, name="attention_mask")])
    def encode(input_ids, attention_mask):
        rows = tf.gather(t_table, input_ids) * attention_mask[..., None]
        pooled = tf.reduce_sum(rows, 1) / tf.maximum(tf.reduce_sum(attention_mask, 1, keepdims=True), 1.0)
        return {"embedding": tf.tanh(tf.matmul(pooled, t_dense))}

    def calibration():
        for text in CALIBRATION:
            e = tok.encode(text)
            yield [np.array([e.ids], np.int32), np.array([e.attention_mask], np.float32)]

    conv = tf.lite.TFLiteConverter.from_concrete_functions([encode.get_concrete_function()], encode)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = calibration
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    blob = conv.convert()
    os.makedirs(out, exist_ok=True)
    model_path = os.path.join(out, f"{NAME}.tflite")
    with open(model_path, "wb") as f:
        f.write(blob)
    golden = []
    for text in GOLDEN:
        e = tok.encode(text)
        vector = reference(table, dense, np.array(e.ids), np.array(e.attention_mask, np.float32))
        golden.append({"text": text, "expected": [round(float(x), 6) for x in vector],
                       "min_cosine": 0.98})
    tokenizer_sha = hashlib.sha256(open(tokenizer_path, "rb").read()).hexdigest()
    manifest = {
        "v": 1, "name": NAME, "version": "1", "task": "text-embedding",
        "file": f"{NAME}.tflite", "sha256": hashlib.sha256(blob).hexdigest(),
        "size_bytes": len(blob), "quantization": "int8",
        "inputs": [{"name": "input_ids", "dtype": "int32", "shape": [1, MAX_TOKENS]},
                   {"name": "attention_mask", "dtype": "int8", "shape": [1, MAX_TOKENS]}],
        "outputs": [{"name": "embedding", "dtype": "int8", "shape": [1, OUT]}],
        "tokenizer": {"kind": "wordpiece", "file": "../minilm/tokenizer.json",
                      "sha256": tokenizer_sha, "max_tokens": MAX_TOKENS},
        "golden": golden,
        "budget": {"p95_latency_ms": 250.0, "max_rss_mib": 400.0},
        "source": {"recipe": "models/tiny/build.py", "purpose": "test fixture"},
    }
    with open(os.path.join(out, f"{NAME}.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"wrote {model_path} ({len(blob)} bytes)")


if __name__ == "__main__":
    main()
