// ops/residual_rmsnorm.cu: residual add + RMSNorm(s) in one pass, a warp per row with the rows in registers
// (ops/rmsnorm_row.cuh: the same loads and sums as ops/rmsnorm.cu, so the same bits as rmsnorm + add + rmsnorm).
// Forward reads h and o and writes s (and y); backward reads ds (dy, s) and o and writes dh and do: at 512
// tokens the three to eight launches they replace were each a few microseconds of latency.
#include "ops/residual_rmsnorm.h"
#include "ops/rmsnorm_row.cuh"

namespace ops {
namespace {

using rmsrow::kV;
template <typename T>
using V8 = Vec<T, kV>;

template <typename T, int NV, bool kNext>
__global__ void __launch_bounds__(32 * rmsrow::kRowsPerBlock) residual_rmsnorm_forward_kernel(T* __restrict__ s,
    T* __restrict__ y, float* __restrict__ rstd1, float* __restrict__ rstd2, const T* __restrict__ h,
    const T* __restrict__ o, const float* __restrict__ w1, const float* __restrict__ w2, RmsNormParams p) {
  const int64_t row = int64_t(blockIdx.x) * rmsrow::kRowsPerBlock + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= p.rows) return;
  const int64_t nv = p.cols / kV, off = row * p.cols;
  V8<T> ov[NV], sv[NV];
  rmsrow::load(ov, o + off, nv, lane);
  rmsrow::load(sv, h + off, nv, lane);
  const float rs1 = rmsrow::rstd(ov, nv, lane, p.cols, p.eps);
  if (lane == 0) rstd1[row] = rs1;
  V8<T>* sr = reinterpret_cast<V8<T>*>(s + off);
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int64_t v = lane + 32 * i;
    if (v >= nv) break;
    const V8<T> n = rmsrow::normed(ov[i], w1, v, rs1);
#pragma unroll
    for (int k = 0; k < kV; ++k)  // ops::add; _rn: no FMA with n's product when T is f32 (n is rounded first)
      sv[i].v[k] = from_f32<T>(__fadd_rn(to_f32(sv[i].v[k]), to_f32(n.v[k])));
    sr[v] = sv[i];
  }
  if (!kNext) return;
  const float rs2 = rmsrow::rstd(sv, nv, lane, p.cols, p.eps);
  if (lane == 0) rstd2[row] = rs2;
  V8<T>* yr = reinterpret_cast<V8<T>*>(y + off);
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int64_t v = lane + 32 * i;
    if (v >= nv) break;
    yr[v] = rmsrow::normed(sv[i], w2, v, rs2);
  }
}

// g = ds (+ the entry norm's dx, added as the tape adds it); dh (set/add) = g; do (set/add) = norm1's dx of g.
template <typename T, int NV, bool kNext>
__global__ void __launch_bounds__(32 * rmsrow::kRowsPerBlock) residual_rmsnorm_backward_kernel(T* __restrict__ dh,
    bool dh_add, T* __restrict__ d_o, bool do_add, const T* __restrict__ ds, const T* __restrict__ dy,
    const T* __restrict__ s, const T* __restrict__ o, const float* __restrict__ w1, const float* __restrict__ w2,
    const float* __restrict__ rstd1, const float* __restrict__ rstd2, RmsNormParams p) {
  const int64_t row = int64_t(blockIdx.x) * rmsrow::kRowsPerBlock + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= p.rows) return;
  // Two rows in registers at a time (dy and s, turning into g as ds's vectors arrive; then g and o): more
  // spill at C = 2304.
  const int64_t nv = p.cols / kV, off = row * p.cols;
  V8<T> g[NV];
  if (kNext) {
    V8<T> dv[NV], sv[NV];
    rmsrow::load(dv, dy + off, nv, lane);
    rmsrow::load(sv, s + off, nv, lane);
    const float rs2 = rstd2[row];
    const float kk2 = rmsrow::grad_coef(dv, sv, w2, nv, lane, p.cols, rs2);
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int64_t v = lane + 32 * i;
      if (v >= nv) break;
      float val[kV];
      rmsrow::grad(val, dv[i], sv[i], w2, v, rs2, kk2);
      const V8<T> d = reinterpret_cast<const V8<T>*>(ds + off)[v];
#pragma unroll
      for (int k = 0; k < kV; ++k) g[i].v[k] = from_f32<T>(val[k] + to_f32(d.v[k]));
    }
  } else {
    rmsrow::load(g, ds + off, nv, lane);
  }
  V8<T> ov[NV];
  rmsrow::load(ov, o + off, nv, lane);
  if (dh != nullptr) {
    V8<T>* dhr = reinterpret_cast<V8<T>*>(dh + off);
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int64_t v = lane + 32 * i;
      if (v >= nv) break;
      V8<T> out = g[i];
      if (dh_add) {
        const V8<T> prev = dhr[v];
#pragma unroll
        for (int k = 0; k < kV; ++k) out.v[k] = from_f32<T>(to_f32(prev.v[k]) + to_f32(g[i].v[k]));  // accumulate
      }
      dhr[v] = out;
    }
  }
  const float rs1 = rstd1[row];
  const float kk1 = rmsrow::grad_coef(g, ov, w1, nv, lane, p.cols, rs1);
  V8<T>* dor = reinterpret_cast<V8<T>*>(d_o + off);
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int64_t v = lane + 32 * i;
    if (v >= nv) break;
    float val[kV];
    rmsrow::grad(val, g[i], ov[i], w1, v, rs1, kk1);
    V8<T> out;
    if (do_add) out = dor[v];
#pragma unroll
    for (int k = 0; k < kV; ++k) out.v[k] = from_f32<T>(do_add ? val[k] + to_f32(out.v[k]) : val[k]);
    dor[v] = out;
  }
}

void check_cuda(std::initializer_list<TensorView> ts, TensorView w1, TensorView rstd1, const RmsNormParams& p,
                const char* what) {
  ENGINE_CHECK(w1.dtype == DType::kF32 && rstd1.dtype == DType::kF32, what, ": w and rstd must be f32 on CUDA");
  ENGINE_CHECK(residual_rmsnorm_fusable(p.cols) && rmsrow::vec_rows(ts, p.cols), what,
               ": CUDA needs cols % 8 == 0, cols <= 4096 and 8-element aligned rows, got cols=", p.cols);
}

}  // namespace

namespace cuda {

void residual_rmsnorm_forward(TensorView s, TensorView y, TensorView rstd1, TensorView rstd2, TensorView h,
                              TensorView o, TensorView w1, TensorView w2, const RmsNormParams& p,
                              cudaStream_t stream) {
  residual_rmsnorm_forward_check(s, y, rstd1, rstd2, h, o, w1, w2, p);
  check_cuda({s, y, h, o, w1, w2}, w1, rstd1, p, "residual_rmsnorm_forward");
  ENGINE_CHECK(!w2.defined() || (w2.dtype == DType::kF32 && rstd2.dtype == DType::kF32),
               "residual_rmsnorm_forward: w2 and rstd2 must be f32 on CUDA");
  if (p.rows == 0) return;
  OPS_DISPATCH_FLOAT(o.dtype, T, rmsrow::dispatch_nv(p.cols, [&](auto nv) {
    constexpr int NV = decltype(nv)::value;
    const auto kernel = w2.defined() ? residual_rmsnorm_forward_kernel<T, NV, true>
                                     : residual_rmsnorm_forward_kernel<T, NV, false>;
    kernel<<<rmsrow::grid_for(p.rows), 32 * rmsrow::kRowsPerBlock, 0, stream>>>(
        s.ptr<T>(), y.ptr<T>(), rstd1.ptr<float>(), rstd2.ptr<float>(), h.ptr<const T>(), o.ptr<const T>(),
        w1.ptr<const float>(), w2.ptr<const float>(), p);
  }));
  CUDA_CHECK_LAST();
}

void residual_rmsnorm_backward(TensorView dh, Accum dh_mode, TensorView d_o, Accum do_mode, TensorView ds,
                               TensorView dy, TensorView s, TensorView o, TensorView w1, TensorView w2,
                               TensorView rstd1, TensorView rstd2, const RmsNormParams& p, cudaStream_t stream) {
  residual_rmsnorm_backward_check(dh, d_o, ds, dy, s, o, w1, w2, rstd1, rstd2, p);
  check_cuda({dh, d_o, ds, dy, s, o, w1, w2}, w1, rstd1, p, "residual_rmsnorm_backward");
  if (p.rows == 0) return;
  OPS_DISPATCH_FLOAT(o.dtype, T, rmsrow::dispatch_nv(p.cols, [&](auto nv) {
    constexpr int NV = decltype(nv)::value;
    const auto kernel = w2.defined() ? residual_rmsnorm_backward_kernel<T, NV, true>
                                     : residual_rmsnorm_backward_kernel<T, NV, false>;
    kernel<<<rmsrow::grid_for(p.rows), 32 * rmsrow::kRowsPerBlock, 0, stream>>>(
        dh.ptr<T>(), dh_mode == Accum::kAdd, d_o.ptr<T>(), do_mode == Accum::kAdd, ds.ptr<const T>(),
        dy.ptr<const T>(), s.ptr<const T>(), o.ptr<const T>(), w1.ptr<const float>(), w2.ptr<const float>(),
        rstd1.ptr<const float>(), rstd2.ptr<const float>(), p);
  }));
  CUDA_CHECK_LAST();
}

}  // namespace cuda
}  // namespace ops
