// Naive row-major gemm (see cblas.h): C = alpha*op(A)*op(B) + beta*C, accumulated in double.
#include "cblas.h"

namespace {
template <typename T>
void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b,
          int ldb, T beta, T* c, int ldc) {
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double s = 0;
      for (int p = 0; p < k; ++p) {
        const double x = ta == CblasTrans ? a[p * lda + i] : a[i * lda + p];
        const double y = tb == CblasTrans ? b[j * ldb + p] : b[p * ldb + j];
        s += x * y;
      }
      T& out = c[i * ldc + j];
      out = T(double(alpha) * s + (beta == T(0) ? 0.0 : double(beta) * double(out)));
    }
}
}  // namespace

void cblas_sgemm(CBLAS_ORDER, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha, const float* a,
                 int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void cblas_dgemm(CBLAS_ORDER, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, double alpha,
                 const double* a, int lda, const double* b, int ldb, double beta, double* c, int ldc) {
  gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void openblas_set_num_threads(int) {}
