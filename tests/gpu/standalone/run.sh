#!/usr/bin/env bash
# Stand-alone validation of the CUDA kernels against the CPU kernels, needing only nvcc, cuBLAS and a
# host g++ with OpenMP: no CMake, OpenBLAS (a naive reference gemm stands in), libxsmm (a stub that
# takes no product, libxsmm.h here), GoogleTest (a minimal stand-in, gtest/gtest.h here), yaml-cpp,
# HDF5 or MPI. For a bare GPU machine, e.g.:
#   bash tests/gpu/standalone/run.sh            # builds into /tmp/lockstep-gpu-check and runs
# Runs tests/gpu/gpu_ops_test.cpp and gpu_conv_test.cpp (every CUDA op vs the CPU op); the training-step,
# determinism and NCCL tests need the full build (cmake -DLOCKSTEP_CUDA=ON ... && ctest -L gpu).
# Environment: CUDA_HOME (default /usr/local/cuda), ARCH (default sm_90), OUT_DIR, CXX (default g++).
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
shim="$root/tests/gpu/standalone"
cuda=${CUDA_HOME:-/usr/local/cuda}
arch=${ARCH:-sm_90}
out=${OUT_DIR:-/tmp/lockstep-gpu-check}
cxx=${CXX:-g++}
mkdir -p "$out"
cd "$root"
flags=(-std=c++20 -O2 -fopenmp -fno-math-errno -fno-trapping-math -DLOCKSTEP_HAVE_CUDA=1 -I"$root" -I"$shim" -I"$cuda/include")
srcs=(core/error.cpp core/tensor.cpp core/ops.cpp core/kernels/cpu.cpp core/kernels/conv_cpu.cpp
      tests/gpu/gpu_ops_test.cpp tests/gpu/gpu_conv_test.cpp
      "$shim/mini_main.cpp" "$shim/cblas_naive.cpp")
t0=$(date +%s)
pids=()
for f in "${srcs[@]}"; do
  "$cxx" "${flags[@]}" -c "$f" -o "$out/$(basename "$f").o" & pids+=($!)
done
"$cuda/bin/nvcc" -std=c++17 -O3 -arch="$arch" --fmad=false --expt-relaxed-constexpr --extended-lambda \
  -ccbin "$cxx" -I"$root" -c core/kernels/cuda.cu -o "$out/cuda.cu.o"
for p in "${pids[@]}"; do wait "$p"; done
"$cxx" -fopenmp "$out"/*.o -L"$cuda/lib64" -L"$cuda/lib" -Wl,-rpath,"$cuda/lib64" -lcublas -lcudart -o "$out/gpu_ops_check"
echo "built in $(( $(date +%s) - t0 )) s: $out/gpu_ops_check"
"$out/gpu_ops_check"
