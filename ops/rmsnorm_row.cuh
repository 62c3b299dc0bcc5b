// ops/rmsnorm_row.cuh: the warp-per-row RMSNorm pieces shared by ops/rmsnorm.cu and ops/residual_rmsnorm.cu,
// so that the fused residual kernels give the bits of the separate ones (same loads, same sum order).
// A warp owns a row of 8-element vectors; lane l holds vectors l, l + 32, ... (at most NV) in registers.
#pragma once
#include "ops/cuda_common.cuh"

namespace ops {
namespace rmsrow {

constexpr int kV = 8, kRowsPerBlock = 4;  // warps (= rows) per block: 512 rows use 128 blocks

// 1 + w for the 8 columns of vector v (f32 weights, 32-byte aligned).
__device__ __forceinline__ void load_w1(const float* w, int64_t v, float (&o)[kV]) {
  const float4 a = reinterpret_cast<const float4*>(w)[2 * v], b = reinterpret_cast<const float4*>(w)[2 * v + 1];
  o[0] = 1.f + a.x; o[1] = 1.f + a.y; o[2] = 1.f + a.z; o[3] = 1.f + a.w;
  o[4] = 1.f + b.x; o[5] = 1.f + b.y; o[6] = 1.f + b.z; o[7] = 1.f + b.w;
}

// All of the lane's vectors of `row` (nv vectors in all), loads issued together.
template <typename T, int NV>
__device__ __forceinline__ void load(Vec<T, kV> (&r)[NV], const T* row, int64_t nv, int lane) {
  const Vec<T, kV>* p = reinterpret_cast<const Vec<T, kV>*>(row);
#pragma unroll
  for (int i = 0; i < NV; ++i)
    if (lane + 32 * i < nv) r[i] = p[lane + 32 * i];
}

// rsqrt(mean(x^2) + eps) of the warp's row.
template <typename T, int NV>
__device__ __forceinline__ float rstd(const Vec<T, kV> (&x)[NV], int64_t nv, int lane, int64_t cols, float eps) {
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < NV; ++i)
    if (lane + 32 * i < nv)
#pragma unroll
      for (int k = 0; k < kV; ++k) ss += to_f32(x[i].v[k]) * to_f32(x[i].v[k]);
  ss = warp_sum(ss);
  return rsqrtf(ss / float(cols) + eps);
}

// y = round((x rs)(1 + w)) for the lane's vector i of the row.
template <typename T>
__device__ __forceinline__ Vec<T, kV> normed(const Vec<T, kV>& x, const float* w, int64_t v, float rs) {
  float w1[kV];
  load_w1(w, v, w1);
  Vec<T, kV> o;
#pragma unroll
  for (int k = 0; k < kV; ++k) o.v[k] = from_f32<T>((to_f32(x.v[k]) * rs) * w1[k]);
  return o;
}

// rstd^3 * sum_c dy[c] (1 + w[c]) x[c] / C of the warp's row: the backward's row coefficient.
template <typename T, int NV>
__device__ __forceinline__ float grad_coef(const Vec<T, kV> (&dy)[NV], const Vec<T, kV> (&x)[NV], const float* w,
                                           int64_t nv, int lane, int64_t cols, float rs) {
  float gx = 0.f;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int64_t v = lane + 32 * i;
    if (v >= nv) break;
    float w1[kV];
    load_w1(w, v, w1);
#pragma unroll
    for (int k = 0; k < kV; ++k) gx += to_f32(dy[i].v[k]) * w1[k] * to_f32(x[i].v[k]);
  }
  gx = warp_sum(gx);
  return rs * rs * rs * gx / float(cols);
}

// The backward's dx for the lane's vector i, in f32 before rounding: dy (1 + w) rs - x kk.
template <typename T>
__device__ __forceinline__ void grad(float (&out)[kV], const Vec<T, kV>& dy, const Vec<T, kV>& x, const float* w,
                                     int64_t v, float rs, float kk) {
  float w1[kV];
  load_w1(w, v, w1);
#pragma unroll
  for (int k = 0; k < kV; ++k) out[k] = to_f32(dy.v[k]) * w1[k] * rs - to_f32(x.v[k]) * kk;
}

// Calls f(std::integral_constant<int, NV>{}) with the smallest NV in {1, 2, 4, 8, 12, 16} that holds a lane's
// vectors of a row, cols <= 32 * 8 * 16.
template <typename F>
void dispatch_nv(int64_t cols, F f) {
  using std::integral_constant;
  const int64_t per_lane = (cols / kV + 31) / 32;
  if (per_lane <= 1) f(integral_constant<int, 1>{});
  else if (per_lane <= 2) f(integral_constant<int, 2>{});
  else if (per_lane <= 4) f(integral_constant<int, 4>{});
  else if (per_lane <= 8) f(integral_constant<int, 8>{});
  else if (per_lane <= 12) f(integral_constant<int, 12>{});
  else f(integral_constant<int, 16>{});
}

// Rows of whole 8-element vectors at 16-byte (32-byte for f32 data) aligned addresses, short enough for a
// warp's registers (cols <= 4096: every Gemma-2 2B/9B activation).
inline bool vec_rows(std::initializer_list<TensorView> ts, int64_t cols) {
  return cols % kV == 0 && cols <= 32 * kV * 16 && vec8_aligned(ts);
}

inline unsigned grid_for(int64_t rows) { return unsigned((rows + kRowsPerBlock - 1) / kRowsPerBlock); }

}  // namespace rmsrow
}  // namespace ops
