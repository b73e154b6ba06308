#!/usr/bin/env python3
"""Carries the ai.embed model to a device machine under the 64 MiB that a device call
takes: `narrow` writes every F32 tensor as F16 (88.7 MB -> 44 MB) beside a copy of the
tokenizer and config files; `widen`, on the device, writes them back as F32 with the
original metadata. The widened weights are the F16-rounded originals, not the published
file: gpu/check.sh says so in its log, and there the reference (sentence-transformers)
loads the same widened directory, so the GPU/CPU-vs-reference agreement compares like
with like.

  model_f16.py narrow SRC_MODEL_DIR DST_DIR
  model_f16.py widen  SRC_DIR DST_MODEL_DIR
"""
import hashlib
import os
import shutil
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

WEIGHTS = "model.safetensors"
NARROW = "model.f16.safetensors"


def convert(src, dst, dtype):
    tensors = {}
    with safe_open(src, framework="numpy") as f:
        meta = f.metadata()
        for k in f.keys():
            t = f.get_tensor(k)
            tensors[k] = t.astype(dtype) if t.dtype in (np.float32, np.float16) else t
    save_file(tensors, dst, metadata=meta)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def copy_rest(src, dst, skip):
    for root, _dirs, files in os.walk(src):
        rel = os.path.relpath(root, src)
        os.makedirs(os.path.join(dst, rel), exist_ok=True)
        for n in files:
            if n not in skip:
                shutil.copy2(os.path.join(root, n), os.path.join(dst, rel, n))


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("narrow", "widen"):
        sys.exit(__doc__)
    mode, src, dst = sys.argv[1:]
    os.makedirs(dst, exist_ok=True)
    if mode == "narrow":
        copy_rest(src, dst, {WEIGHTS})
        convert(os.path.join(src, WEIGHTS), os.path.join(dst, NARROW), np.float16)
        with open(os.path.join(dst, "CARRIED.txt"), "w") as f:
            f.write(f"narrowed to F16 from {WEIGHTS} sha256 {sha256(os.path.join(src, WEIGHTS))}\n")
    else:
        copy_rest(src, dst, {NARROW})
        convert(os.path.join(src, NARROW), os.path.join(dst, WEIGHTS), np.float32)
    print(dst)


if __name__ == "__main__":
    main()
