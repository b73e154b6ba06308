#!/usr/bin/env python3
"""Independent reference for ai.embed: all-MiniLM-L6-v2 (a 6-layer BERT encoder, mean
pooling, L2 normalisation) written from the model's config in NumPy, in float64, reading
the same model.safetensors and tokenizer.json as the worker. It shares no code with the
Rust encoder (gpu/src/encoder.rs); the `tokenizers` Python package tokenizes, set up as
sentence-transformers does (truncation at max_seq_length, no fixed padding).

  embed_ref.py MODEL_DIR --check-published          the model card's example similarities
  embed_ref.py MODEL_DIR --sentences S.json --out E.json   embeddings of a sentence set

Needs: numpy, safetensors, tokenizers (scripts/ensure-model.sh installs them).
"""
import argparse
import json
import math
import os
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer


def load(model_dir):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    st = json.load(open(os.path.join(model_dir, "sentence_bert_config.json")))
    w = {k: v.astype(np.float64) for k, v in load_file(os.path.join(model_dir, "model.safetensors")).items()
         if v.dtype != np.int64}
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    # tokenizer.json ships fixed padding and truncation at 128; sentence-transformers
    # replaces both: truncate at max_seq_length, pad per batch.
    tok.no_padding()
    tok.enable_truncation(max_length=int(st["max_seq_length"]))
    return cfg, w, tok


def layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


_erf = np.vectorize(math.erf)


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def encode(cfg, w, tok, texts, normalize=True):
    encs = tok.encode_batch(texts)
    n = max(len(e.ids) for e in encs)
    ids = np.zeros((len(texts), n), dtype=np.int64)
    mask = np.zeros((len(texts), n), dtype=np.float64)
    for i, e in enumerate(encs):
        ids[i, :len(e.ids)] = e.ids
        mask[i, :len(e.ids)] = 1.0
    eps = cfg["layer_norm_eps"]
    h, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    dh = h // nh
    x = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][np.arange(n)][None]
         + w["embeddings.token_type_embeddings.weight"][0][None, None])
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    bias = (1.0 - mask)[:, None, None, :] * -1e9  # padded keys get no attention
    for l in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{l}."
        lin = lambda t, name: t @ w[p + name + ".weight"].T + w[p + name + ".bias"]
        def heads(t):
            return t.reshape(t.shape[0], n, nh, dh).transpose(0, 2, 1, 3)
        q = heads(lin(x, "attention.self.query"))
        k = heads(lin(x, "attention.self.key"))
        v = heads(lin(x, "attention.self.value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(0, 2, 1, 3).reshape(x.shape[0], n, h)
        x = layer_norm(lin(ctx, "attention.output.dense") + x,
                       w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps)
        f = lin(gelu(lin(x, "intermediate.dense")), "output.dense")
        x = layer_norm(f + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
    pooled = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
    if normalize:
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled, [len(e.ids) for e in encs], [len(e.overflowing) > 0 for e in encs]


def sentence_set(path):
    spec = json.load(open(path))
    long = spec["long"] * spec["long_repeat"]
    return [long if s == "LONG" else s for s in spec["sentences"]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--check-published", action="store_true")
    ap.add_argument("--sentences")
    ap.add_argument("--out")
    a = ap.parse_args()
    cfg, w, tok = load(a.model_dir)
    if a.check_published:
        # sentence-transformers' published example for this model (its model card and
        # the quickstart): similarities to four decimals.
        e, _, _ = encode(cfg, w, tok, ["The weather is lovely today.", "It's so sunny outside!",
                                      "He drove to the stadium."])
        sim = e @ e.T
        got = [sim[0, 1], sim[0, 2], sim[1, 2]]
        want = [0.6660, 0.1046, 0.1411]
        print("published:", want, "reference:", [round(float(g), 4) for g in got])
        if any(abs(g - x) > 5e-4 for g, x in zip(got, want)):
            print("MISMATCH with the published similarities", file=sys.stderr)
            sys.exit(1)
    if a.sentences:
        # One sentence per batch: no padding, so the exact erf runs on real tokens only
        # (the published check above is the padded, masked batch).
        texts = sentence_set(a.sentences)
        rows = [encode(cfg, w, tok, [t]) for t in texts]
        out = {"dim": int(rows[0][0].shape[1]), "tokens": [r[1][0] for r in rows],
               "truncated": [r[2][0] for r in rows],
               "embeddings": [r[0][0].tolist() for r in rows]}
        if a.out:
            with open(a.out, "w") as f:
                json.dump(out, f)
        else:
            json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
