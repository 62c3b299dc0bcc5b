// ops/matmul_cpu.cpp: reference matmul (plain loops, f64 accumulation), also the CPU backend's GEMM.
#include <vector>

#include "ops/matmul.h"

namespace ops {
namespace cpu {
void matmul(TensorView c, TensorView a, TensorView b, const MatmulParams& p) {
  detail::check_matmul(c, a, b, p);
  const int64_t sa = detail::resolve_stride(p.stride_a, p.m * p.k), sb = detail::resolve_stride(p.stride_b, p.k * p.n),
                sc = detail::resolve_stride(p.stride_c, p.m * p.n);
  std::vector<double> arow(p.k), bt(p.n * p.k);  // op(A) row i; op(B) transposed to (n,k)
  for (int64_t z = 0; z < p.batch; ++z) {
    for (int64_t kk = 0; kk < p.k; ++kk)
      for (int64_t j = 0; j < p.n; ++j)
        bt[j * p.k + kk] = engine::load_f64(b.data, b.dtype, z * sb + (p.trans_b ? j * p.k + kk : kk * p.n + j));
    for (int64_t i = 0; i < p.m; ++i) {
      for (int64_t kk = 0; kk < p.k; ++kk)
        arow[kk] = engine::load_f64(a.data, a.dtype, z * sa + (p.trans_a ? kk * p.m + i : i * p.k + kk));
      for (int64_t j = 0; j < p.n; ++j) {
        const double* bj = &bt[j * p.k];
        double acc = 0;
        for (int64_t kk = 0; kk < p.k; ++kk) acc += arow[kk] * bj[kk];
        const int64_t ci = z * sc + i * p.n + j;
        double v = double(p.alpha) * acc;
        if (p.beta != 0.f) v += double(p.beta) * engine::load_f64(c.data, c.dtype, ci);
        engine::store_f64(c.data, c.dtype, ci, v);
      }
    }
  }
}
}  // namespace cpu

}  // namespace ops
