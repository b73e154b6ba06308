#!/usr/bin/env python3
"""sentence-transformers itself as the reference for ai.embed, for a machine where it is
installed (a device machine: gpu/check.sh runs it there when it can be imported).
Writes the same JSON as embed_ref.py for the fixed sentence set.

  st_ref.py MODEL_DIR --sentences S.json --out E.json [--device cuda|cpu]
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from embed_ref import sentence_set  # noqa: E402  (the sentence set only, no model code)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--sentences", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default=None)
    a = ap.parse_args()
    from sentence_transformers import SentenceTransformer

    m = SentenceTransformer(a.model_dir, device=a.device)
    texts = sentence_set(a.sentences)
    e = m.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    sim = e[:3] @ e[:3].T
    print("sentence-transformers published-example similarities:",
          [round(float(sim[0, 1]), 4), round(float(sim[0, 2]), 4), round(float(sim[1, 2]), 4)])
    with open(a.out, "w") as f:
        json.dump({"dim": int(e.shape[1]), "source": "sentence-transformers",
                   "embeddings": e.astype(float).tolist()}, f)


if __name__ == "__main__":
    main()
