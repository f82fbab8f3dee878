#!/usr/bin/env bash
# Install Horovod 0.28.1 into the given Python's environment, building it once.
#
# The released sdist asks for C++14, but torch >= 2 headers need C++17: patch the two
# CMakeLists, build with gloo (and MPI when its headers exist), and keep the wheel in
# $HOROVOD_WHEEL_CACHE so the next install is a plain wheel install. By default that cache
# is outside the checkout, like pip's (a fresh clone on this machine does not build again),
# and per torch and Python version: the extension is compiled against both.
set -euo pipefail
python=${1:?usage: build_horovod.sh PYTHON}
version=0.28.1
abi=$("$python" -c 'import sys, torch; print(f"torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}")')
cache=${HOROVOD_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aigc-lifecycle/horovod/$abi}
mkdir -p "$cache"
wheel=$(ls "$cache"/horovod-$version-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$python" -m pip download -q --no-deps --no-binary :all: "horovod==$version" -d "$work"
  tar xzf "$work/horovod-$version.tar.gz" -C "$work"
  src="$work/horovod-$version"
  sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
    "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
  if command -v mpicxx > /dev/null; then export HOROVOD_WITH_MPI=1; else export HOROVOD_WITHOUT_MPI=1; fi
  # GPU collectives through NCCL only when asked (a CUDA image with NCCL): a CUDA compiler
  # alone, without NCCL, would fail the build.
  if [ "${HOROVOD_NCCL:-0}" = 1 ]; then export HOROVOD_GPU_OPERATIONS=NCCL; fi
  echo "building horovod $version (gloo${HOROVOD_WITH_MPI:+ + MPI}${HOROVOD_GPU_OPERATIONS:+ + NCCL});" \
    "this takes a few minutes"
  HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
    HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS=-j"$(nproc)" \
    "$python" -m pip wheel -q --no-build-isolation --no-deps "$src" -w "$cache"
  wheel=$(ls "$cache"/horovod-$version-*.whl | head -1)
fi
"$python" -m pip install -q --no-deps "$wheel"
"$python" -c "import horovod, horovod.torch as hvd; print('horovod', horovod.__version__, 'gloo', hvd.gloo_built(), 'mpi', hvd.mpi_built())"
