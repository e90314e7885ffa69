// A stub of the libxsmm API core/kernels/cpu.cpp calls, for the stand-alone GPU check (run.sh): it
// dispatches no kernel, so every float product falls back to cblas_sgemm (cblas_naive.cpp here).
#pragma once

typedef int libxsmm_blasint;
typedef void (*libxsmm_smmfunction)(const float* a, const float* b, float* c);
enum { LIBXSMM_GEMM_FLAG_NONE = 0, LIBXSMM_GEMM_FLAG_TRANS_B = 2 };
enum { LIBXSMM_PREFETCH_NONE = 0 };

inline void libxsmm_init() {}
inline libxsmm_smmfunction libxsmm_smmdispatch(libxsmm_blasint, libxsmm_blasint, libxsmm_blasint,
                                               const libxsmm_blasint*, const libxsmm_blasint*,
                                               const libxsmm_blasint*, const float*, const float*, const int*,
                                               const int*) {
  return nullptr;
}
// Does nothing: with no kernel dispatched, cpu.cpp drops the transposed scratch and hands cblas_sgemm
// the caller's operands.
inline int libxsmm_otrans(void*, const void*, unsigned int, libxsmm_blasint, libxsmm_blasint, libxsmm_blasint,
                          libxsmm_blasint) {
  return 0;
}
