#!/usr/bin/env python3
"""Writes a feed-forward network in the beamline-ffn/v1 safetensors format (gpu/README.md).

Standard library only. Example:

    python3 gpu/scripts/make_model.py --out models/demo.safetensors \
        --sizes 4,16,3 --activations relu,softmax --seed 1 --check-input 0.1,0.2,0.3,0.4

writes a 4 -> 16 (relu) -> 3 (softmax) network with random weights and, with
--check-input, prints {"outputs": [[...]]}: the network's output for those rows computed
here in plain Python (rows separated by ';'), a reference for the worker's result.
"""

import argparse
import json
import math
import random
import struct
import sys

FORMAT = "beamline-ffn/v1"
ACTIVATIONS = ("none", "relu", "gelu", "tanh", "softmax")


def f32(x):
    """Rounds to the nearest float32, as stored in the file."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, shape, flat list of floats), stored as little-endian F32."""
    header = {"__metadata__": metadata}
    blobs = []
    offset = 0
    for name, shape, values in tensors:
        blob = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((8 - len(raw) % 8) % 8)  # the format pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)


def activate(name, row):
    if name == "relu":
        return [max(v, 0.0) for v in row]
    if name == "tanh":
        return [math.tanh(v) for v in row]
    if name == "gelu":
        return [0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in row]
    if name == "softmax":
        m = max(row)
        e = [math.exp(v - m) for v in row]
        s = sum(e)
        return [v / s for v in e]
    return row


def forward(layers, row):
    for (n_in, n_out, w, b, act) in layers:
        row = activate(act, [b[j] + sum(row[i] * w[j * n_in + i] for i in range(n_in)) for j in range(n_out)])
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="file to write")
    p.add_argument("--sizes", required=True, help="layer widths, input first: 4,16,3")
    p.add_argument("--activations", help="one per layer (relu, gelu, tanh, softmax, none); default relu..., none last")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check-input", help="rows to run through the network: 'a,b,c;d,e,f'")
    a = p.parse_args()

    sizes = [int(s) for s in a.sizes.split(",")]
    if len(sizes) < 2 or min(sizes) < 1:
        sys.exit("--sizes needs at least two positive widths")
    n_layers = len(sizes) - 1
    acts = a.activations.split(",") if a.activations else ["relu"] * (n_layers - 1) + ["none"]
    if len(acts) != n_layers or any(x not in ACTIVATIONS for x in acts):
        sys.exit("--activations needs %d of %s" % (n_layers, ", ".join(ACTIVATIONS)))
    if "softmax" in acts[:-1]:
        sys.exit("softmax is only allowed on the last layer")

    rng = random.Random(a.seed)
    layers, tensors, specs = [], [], []
    for i in range(n_layers):
        n_in, n_out = sizes[i], sizes[i + 1]
        scale = math.sqrt(3.0 / n_in)
        w = [f32(rng.uniform(-scale, scale)) for _ in range(n_in * n_out)]
        b = [f32(rng.uniform(-0.1, 0.1)) for _ in range(n_out)]
        layers.append((n_in, n_out, w, b, acts[i]))
        tensors.append(("layers.%d.weight" % i, [n_out, n_in], w))
        tensors.append(("layers.%d.bias" % i, [n_out], b))
        specs.append({"weight": "layers.%d.weight" % i, "bias": "layers.%d.bias" % i, "activation": acts[i]})
    write_safetensors(a.out, tensors, {"format": FORMAT, "layers": json.dumps(specs)})

    if a.check_input:
        rows = [[f32(float(v)) for v in r.split(",")] for r in a.check_input.split(";")]
        if any(len(r) != sizes[0] for r in rows):
            sys.exit("--check-input rows need %d values" % sizes[0])
        print(json.dumps({"outputs": [forward(layers, r) for r in rows]}))


if __name__ == "__main__":
    main()
