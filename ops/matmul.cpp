// ops/matmul.cpp: shape inference, preconditions, and the CUDA path (a cuBLASLt call).
#include "ops/matmul.h"

namespace ops {
MatmulParams matmul_params(TensorView c, TensorView a, TensorView b, bool trans_a, bool trans_b, float alpha,
                           float beta) {
  ENGINE_CHECK(a.shape.ndim == c.shape.ndim && b.shape.ndim == c.shape.ndim &&
                   (c.shape.ndim == 2 || c.shape.ndim == 3),
               "matmul: need 2-D or 3-D operands of equal rank, got A", a.shape.str(), " B", b.shape.str(), " C",
               c.shape.str());
  MatmulParams p;
  const int r = c.shape.ndim - 2;
  p.m = c.shape[r];
  p.n = c.shape[r + 1];
  p.k = trans_a ? a.shape[r] : a.shape[r + 1];
  p.trans_a = trans_a;
  p.trans_b = trans_b;
  p.batch = r ? c.shape[0] : 1;
  p.alpha = alpha;
  p.beta = beta;
  return p;
}

namespace detail {
void check_matmul(TensorView c, TensorView a, TensorView b, const MatmulParams& p) {
  ENGINE_CHECK(a.dtype == b.dtype, "matmul: A ", a.str(), " and B ", b.str(), " dtypes differ");
  ENGINE_CHECK(c.dtype == a.dtype || c.dtype == DType::kF32, "matmul: C ", c.str(), " must be f32 or ",
               engine::dtype_name(a.dtype));
  ENGINE_CHECK(p.m > 0 && p.n > 0 && p.k > 0 && p.batch > 0, "matmul: bad sizes m=", p.m, " n=", p.n, " k=", p.k,
               " batch=", p.batch);
  const int64_t sa = detail::resolve_stride(p.stride_a, p.m * p.k), sb = detail::resolve_stride(p.stride_b, p.k * p.n),
                sc = detail::resolve_stride(p.stride_c, p.m * p.n);
  ENGINE_CHECK(a.numel() >= sa * (p.batch - 1) + p.m * p.k, "matmul: A ", a.str(), " too small for m=", p.m,
               " k=", p.k, " batch=", p.batch);
  ENGINE_CHECK(b.numel() >= sb * (p.batch - 1) + p.k * p.n, "matmul: B ", b.str(), " too small for k=", p.k,
               " n=", p.n, " batch=", p.batch);
  ENGINE_CHECK(c.numel() >= sc * (p.batch - 1) + p.m * p.n, "matmul: C ", c.str(), " too small for m=", p.m,
               " n=", p.n, " batch=", p.batch);
}
}  // namespace detail

namespace cuda {
void matmul(TensorView c, TensorView a, TensorView b, const MatmulParams& p, engine::CublasLt& blas,
            cudaStream_t stream) {
  detail::check_matmul(c, a, b, p);
  engine::GemmDesc d;
  d.m = p.m; d.n = p.n; d.k = p.k;
  d.trans_a = p.trans_a; d.trans_b = p.trans_b;
  d.ab_dtype = a.dtype; d.c_dtype = c.dtype;
  d.batch = p.batch;
  d.stride_a = detail::resolve_stride(p.stride_a, p.m * p.k);
  d.stride_b = detail::resolve_stride(p.stride_b, p.k * p.n);
  d.stride_c = detail::resolve_stride(p.stride_c, p.m * p.n);
  d.alpha = p.alpha; d.beta = p.beta;
  blas.gemm(d, a.data, b.data, c.data, stream);
}
}  // namespace cuda

}  // namespace ops
