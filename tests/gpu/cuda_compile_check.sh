#!/usr/bin/env bash
# Compiles and links (does not run) the whole CUDA backend on a machine with nvcc but without cuBLAS and
# NCCL, such as CI's: core/kernels/cuda.cu, comm/nccl_communicator.cpp, the lockstep command and
# gpu_tests, in a build tree of their own (BUILD_DIR/cuda-check: -DLOCKSTEP_CUDA=ON, sm_90 only). cuBLAS
# and NCCL (headers and shared libraries) come from NVIDIA's Python wheels, pinned to nvcc's major
# version, in a virtual environment cached at BUILD_DIR/cuda-venv and reused; CMake sees them through
# LOCKSTEP_CUDA_EXTRA_ROOT. A compile or link error fails (exit 1).
# Exit 77 (CTest: skipped) with a message when there is no nvcc, no pinned wheels for its version, or
# pip cannot install them (offline; remembered for an hour in BUILD_DIR/cuda-venv.pip-failed).
#   bash tests/gpu/cuda_compile_check.sh BUILD_DIR      # CTest: gpu.cuda_build (labels gpu, cuda_build)
# LOCKSTEP_JOBS: parallel compile jobs (default: nproc). LOCKSTEP_NVCC: nvcc (default /usr/local/cuda/bin/nvcc).
set -uo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:?usage: cuda_compile_check.sh BUILD_DIR}
mkdir -p "$build" && build=$(cd "$build" && pwd)
nvcc=${LOCKSTEP_NVCC:-/usr/local/cuda/bin/nvcc}
jobs=${LOCKSTEP_JOBS:-$(nproc)}

if [ ! -x "$nvcc" ]; then
  echo "SKIP: no nvcc at $nvcc: the CUDA backend is not compiled here"; exit 77
fi
version=$("$nvcc" --version | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
case ${version%%.*} in
  # cuBLAS 13.0 (CUDA 13.0 update 1), NCCL 2.28 built for CUDA 13: wheels with include/ and lib/.
  13) want="nvidia-cublas==13.0.2.14 nvidia-nccl-cu13==2.28.9" ;;
  *) echo "SKIP: no cuBLAS/NCCL wheels pinned for nvcc $version (tests/gpu/cuda_compile_check.sh pins CUDA 13)"; exit 77 ;;
esac

# ---- the wheels, in a cached venv ----------------------------------------------------------------
venv=$build/cuda-venv
py=$venv/bin/python
stamp=$venv/lockstep-wheels   # the pins of the last complete install
# Prefixes holding include/{cublas_v2.h,nccl.h} and lib/ (nvidia/cu13 and nvidia/nccl in CUDA 13's wheels).
roots() {
  local site
  site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null) || return 1
  local cublas nccl
  cublas=$(find "$site/nvidia" -maxdepth 3 -path '*/include/cublas_v2.h' 2>/dev/null | head -n1)
  nccl=$(find "$site/nvidia" -maxdepth 3 -path '*/include/nccl.h' 2>/dev/null | head -n1)
  [ -n "$cublas" ] && [ -n "$nccl" ] || return 1
  cublas=$(dirname "$(dirname "$cublas")"); nccl=$(dirname "$(dirname "$nccl")")
  ls "$cublas"/lib/libcublas.so.* "$cublas"/lib/libcublasLt.so.* "$nccl"/lib/libnccl.so.* >/dev/null 2>&1 || return 1
  echo "$cublas;$nccl"
}
if ! { [ -x "$py" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && roots >/dev/null; }; then
  marker=$venv.pip-failed
  if [ -f "$marker" ] && [ -n "$(find "$marker" -mmin -60 2>/dev/null)" ]; then
    echo "SKIP: pip could not install $want within the last hour ($marker; delete it to retry)"; exit 77
  fi
  base=$(command -v python3) || { echo "SKIP: no python3 to make a virtual environment"; exit 77; }
  if ! { [ -x "$py" ] || "$base" -m venv "$venv"; }; then
    echo "SKIP: cannot create a virtual environment with $base"; exit 77
  fi
  echo "installing $want into $venv (about 800 MB)"
  rm -f "$stamp"
  # shellcheck disable=SC2086
  if ! timeout 900 "$py" -m pip install --disable-pip-version-check --quiet --timeout 30 --retries 2 $want || ! roots >/dev/null; then
    touch "$marker"
    echo "SKIP: pip cannot install $want (is the Python package index reachable?)"; exit 77
  fi
  rm -f "$marker"
  echo "$want" > "$stamp"
fi
extra=$(roots)
# The wheels carry only the sonames (libcublas.so.13, libnccl.so.2); find_library (FindCUDAToolkit's
# CUDA::cublas included) wants the unversioned names that a development package would provide.
IFS=';' read -r -a dirs <<< "$extra"
for d in "${dirs[@]}"; do
  for f in "$d"/lib/lib*.so.[0-9]*; do
    [ -e "$f" ] && ln -sfn "$(basename "$f")" "${f%%.so.*}.so"
  done
done

# ---- configure and build the CUDA targets --------------------------------------------------------
tree=$build/cuda-check
echo "nvcc $version; cuBLAS/NCCL from $extra"
cmake -S "$src" -B "$tree" -DCMAKE_BUILD_TYPE=Release -DLOCKSTEP_CUDA=ON \
  "-DLOCKSTEP_CUDA_EXTRA_ROOT=$extra" -DLOCKSTEP_CUDA_ARCHITECTURES=90-real "-DCMAKE_CUDA_COMPILER=$nvcc" \
  -DLOCKSTEP_TESTS=ON -DLOCKSTEP_BENCH=OFF -DLOCKSTEP_NATIVE=OFF > "$tree.configure.log" 2>&1
rc=$?
if [ $rc -ne 0 ] || ! grep -q '\[x\] CUDA + cuBLAS + NCCL' "$tree.configure.log"; then
  cat "$tree.configure.log"
  echo "FAIL: configuring $tree with LOCKSTEP_CUDA=ON (rc $rc)"; exit 1
fi
start=$SECONDS
if ! cmake --build "$tree" -j "$jobs" --target lockstep_tensor lockstep_comm lockstep gpu_tests; then
  echo "FAIL: the CUDA backend does not compile or link (build tree $tree)"; exit 1
fi
# Every CUDA source of the project is in the targets just built.
for f in core/kernels/cuda.cu comm/nccl_communicator.cpp; do
  if ! grep -q "\"file\": \"$src/$f\"" "$tree/compile_commands.json"; then
    echo "FAIL: $f is not compiled in $tree"; exit 1
  fi
done
echo "OK: CUDA backend (cuda.cu, nccl_communicator.cpp, lockstep, gpu_tests) compiled and linked in $((SECONDS - start)) s"
