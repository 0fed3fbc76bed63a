#!/usr/bin/env bash
# Installs the real peer tools for bench/baselines.py's `aimet-amp` and `nncf-hawq` methods, one virtual
# environment per tool, OUTSIDE the repository:
#
#   bash bench/peers/setup.sh [--root DIR] [aimet] [nncf]     (default: both, DIR=${MIXQ_PEERS_DIR:-/work/peers})
#
# -> DIR/aimet (aimet-torch 2.42.0) and DIR/nncf (nncf 2.19.0, the last release with the legacy torch API and
# its HAWQ precision initializer).  bench/baselines.py finds them at the same place (--peers-dir or
# MIXQ_PEERS_DIR).
#
# These tools are NOT dependencies of mixq and this script is NOT run in CI: it exists only for the
# side-by-side benchmark.  Everything is installed through pip as configured on the machine (its local wheel
# folder and indexes), always with a constraints file pinning torch==2.13.0 (CPU) and torchvision==0.28.0: a
# torch requirement that 2.13.0 does not satisfy would otherwise pull a multi-GB CUDA build.  The checkout
# itself is not installed: the peer scripts put it on PYTHONPATH; what `search` imports is installed here.
#
# torchvision 0.28.0 (the only wheel for torch 2.13) is linked against CUDA libraries that the CPU torch
# lacks; bench/peers/_tv.py defines the two op schemas it needs so that `import torchvision` (which aimet
# requires) succeeds without its C++ ops.
set -euo pipefail

ROOT="${MIXQ_PEERS_DIR:-/work/peers}"
PY="${MIXQ_PEERS_PYTHON:-python3}"
TOOLS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --root) ROOT="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    aimet|nncf) TOOLS+=("$1"); shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$1' (allowed: --root DIR, --python EXE, aimet, nncf)" >&2; exit 2 ;;
  esac
done
[[ ${#TOOLS[@]} -eq 0 ]] && TOOLS=(aimet nncf)

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
case "$(realpath -m "$ROOT")/" in
  "$REPO"/*) echo "setup.sh: --root $ROOT is inside the repository; choose a folder outside it" >&2; exit 2 ;;
esac
mkdir -p "$ROOT"
CONSTRAINTS="$ROOT/constraints.txt"
printf 'torch==2.13.0\ntorchvision==0.28.0\n' > "$CONSTRAINTS"

# what `search` imports (numpy, optuna, pydantic, ... ; not the service's packages)
SEARCH_DEPS=(numpy "optuna>=5.0,<6" "pydantic>=2.7,<3" pyyaml scikit-learn scikit-image scipy onnx onnxruntime
             typer rich matplotlib plotly sqlalchemy ml_dtypes)

for tool in "${TOOLS[@]}"; do
  case "$tool" in
    aimet) SPEC="aimet-torch==2.42.0" ;;
    nncf) SPEC="nncf==2.19.0" ;;
  esac
  VENV="$ROOT/$tool"
  echo "== $tool -> $VENV"
  [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
  PIP=("$VENV/bin/python" -m pip install -c "$CONSTRAINTS")
  "${PIP[@]}" torch==2.13.0 torchvision==0.28.0
  "${PIP[@]}" "$SPEC" "${SEARCH_DEPS[@]}"
  # `search` reads its own version from the distribution metadata of mixq; the checkout is not installed
  # (it goes on PYTHONPATH), so record that metadata alone, with the checkout's version
  VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -1)"
  SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  mkdir -p "$SITE/mixq-$VERSION.dist-info"
  printf 'Metadata-Version: 2.1\nName: mixq\nVersion: %s\nSummary: metadata only: the checkout is on PYTHONPATH\n' \
    "$VERSION" > "$SITE/mixq-$VERSION.dist-info/METADATA"
  # the guard against a CUDA build: fail loudly if anything replaced the CPU torch
  "$VENV/bin/python" - <<'PYEOF'
import torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert torch.version.cuda is None, f"a CUDA torch build was installed ({torch.version.cuda})"
print("torch", torch.__version__, "(CPU)")
PYEOF
  PYTHONPATH="$REPO" "$VENV/bin/python" -c "import bench.peers._tv, search; print('search imports:', search.__name__)"
  if [[ "$tool" == nncf ]]; then
    # NNCF's legacy torch API compiles its CPU quantization ops (g++, ninja) on first use, under a 60 s limit
    # that a loaded 2-core machine misses: build them here, without a limit (minutes)
    NNCF_TORCH_LEGACY_TRACING=1 NNCF_EXTENSION_LOAD_TIMEOUT=0 "$VENV/bin/python" -c \
      "from nncf.torch.extensions import force_build_cpu_extensions; force_build_cpu_extensions(); print('nncf CPU extensions built')"
  fi
done
echo "done: ${TOOLS[*]} under $ROOT"
