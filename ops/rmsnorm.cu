// ops/rmsnorm.cu: Gemma RMSNorm kernels, f32 math throughout (SPEC.md §1.2). Rows of 8-element vectors
// (cols % 8 == 0, cols <= 4096, aligned pointers: every activation of Gemma-2 2B/9B): one warp per row with
// the row in registers, 16-byte accesses, the row sum in shuffles only. Otherwise (and for the backward with
// dw): one block per row, scalar accesses.
#include "ops/cuda_common.cuh"
#include "ops/rmsnorm.h"

namespace ops {
namespace {

constexpr int kBlock = 256;

template <typename T>
__global__ void rmsnorm_forward_kernel(T* __restrict__ y, float* __restrict__ rstd, const T* __restrict__ x,
                                       const float* __restrict__ w, RmsNormParams p) {
  __shared__ float smem[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * p.cols;  // (C)
  T* yr = y + row * p.cols;        // (C)
  float ss = 0.f;
  for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) {
    const float v = to_f32(xr[c]);
    ss += v * v;
  }
  ss = block_sum(ss, smem);
  const float rs = rsqrtf(ss / float(p.cols) + p.eps);
  if (threadIdx.x == 0) rstd[row] = rs;
  for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x)
    yr[c] = from_f32<T>((to_f32(xr[c]) * rs) * (1.f + w[c]));
}

// Grid-stride over rows; each block keeps its partial dw in shared memory (C floats) and adds it to the
// global dw once, so atomics scale with the grid, not with N*C.
template <typename T>
__global__ void rmsnorm_backward_kernel(T* __restrict__ dx, bool accumulate, float* __restrict__ dw,
                                        const T* __restrict__ dy, const T* __restrict__ x,
                                        const float* __restrict__ w, const float* __restrict__ rstd,
                                        RmsNormParams p) {
  extern __shared__ float dw_part[];  // (C) when dw is wanted
  __shared__ float smem[32];
  if (dw != nullptr)
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) dw_part[c] = 0.f;
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const T* xr = x + row * p.cols;
    const T* dyr = dy + row * p.cols;
    T* dxr = dx + row * p.cols;
    const float rs = rstd[row];
    float gx = 0.f;
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x)
      gx += to_f32(dyr[c]) * (1.f + w[c]) * to_f32(xr[c]);
    gx = block_sum(gx, smem);
    const float k = rs * rs * rs * gx / float(p.cols);
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) {
      const float d = to_f32(dyr[c]), xv = to_f32(xr[c]);
      float v = d * (1.f + w[c]) * rs - xv * k;
      if (accumulate) v += to_f32(dxr[c]);
      dxr[c] = from_f32<T>(v);
      if (dw != nullptr) dw_part[c] += d * xv * rs;
    }
  }
  if (dw != nullptr) {
    __syncthreads();
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) atomicAdd(&dw[c], dw_part[c]);
  }
}

constexpr int kV = 8, kRowsPerBlock = 4;  // warps (= rows) per block of the vector kernels: more blocks, more SMs

__device__ __forceinline__ void load_w8(const float* w, int64_t v, float (&o)[kV]) {
  const float4 a = reinterpret_cast<const float4*>(w)[2 * v], b = reinterpret_cast<const float4*>(w)[2 * v + 1];
  o[0] = 1.f + a.x; o[1] = 1.f + a.y; o[2] = 1.f + a.z; o[3] = 1.f + a.w;
  o[4] = 1.f + b.x; o[5] = 1.f + b.y; o[6] = 1.f + b.z; o[7] = 1.f + b.w;
}

// A warp per row; lane l holds the row's vectors l, l + 32, ... (at most NV) in registers, all loaded before
// any math, so the row is read once and every load is in flight together (small batches are latency-bound).
template <typename T, int NV>
__global__ void __launch_bounds__(32 * kRowsPerBlock) rmsnorm_forward_vec_kernel(T* __restrict__ y,
    float* __restrict__ rstd, const T* __restrict__ x, const float* __restrict__ w, RmsNormParams p) {
  const int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= p.rows) return;
  const Vec<T, kV>* xr = reinterpret_cast<const Vec<T, kV>*>(x + row * p.cols);
  Vec<T, kV>* yr = reinterpret_cast<Vec<T, kV>*>(y + row * p.cols);
  const int64_t nv = p.cols / kV;
  Vec<T, kV> xv[NV];
#pragma unroll
  for (int i = 0; i < NV; ++i)
    if (lane + 32 * i < nv) xv[i] = xr[lane + 32 * i];
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < NV; ++i)
    if (lane + 32 * i < nv)
#pragma unroll
      for (int k = 0; k < kV; ++k) ss += to_f32(xv[i].v[k]) * to_f32(xv[i].v[k]);
  ss = warp_sum(ss);
  const float rs = rsqrtf(ss / float(p.cols) + p.eps);
  if (lane == 0) rstd[row] = rs;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int64_t v = lane + 32 * i;
    if (v >= nv) break;
    float w1[kV];
    load_w8(w, v, w1);
    Vec<T, kV> o;
#pragma unroll
    for (int k = 0; k < kV; ++k) o.v[k] = from_f32<T>((to_f32(xv[i].v[k]) * rs) * w1[k]);
    yr[v] = o;
  }
}

// dx only (frozen norm weights: every QLoRA run); x and dy rows in registers as in the forward.
template <typename T, int NV>
__global__ void __launch_bounds__(32 * kRowsPerBlock) rmsnorm_backward_vec_kernel(T* __restrict__ dx,
    bool accumulate, const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ w,
    const float* __restrict__ rstd, RmsNormParams p) {
  const int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= p.rows) return;
  const Vec<T, kV>* xr = reinterpret_cast<const Vec<T, kV>*>(x + row * p.cols);
  const Vec<T, kV>* dyr = reinterpret_cast<const Vec<T, kV>*>(dy + row * p.cols);
  Vec<T, kV>* dxr = reinterpret_cast<Vec<T, kV>*>(dx + row * p.cols);
  const int64_t nv = p.cols / kV;
  const float rs = rstd[row];
  Vec<T, kV> xv[NV], dv[NV];
#pragma unroll
  for (int i = 0; i < NV; ++i)
    if (lane + 32 * i < nv) {
      xv[i] = xr[lane + 32 * i];
      dv[i] = dyr[lane + 32 * i];
    }
  float gx = 0.f;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int64_t v = lane + 32 * i;
    if (v >= nv) break;
    float w1[kV];
    load_w8(w, v, w1);
#pragma unroll
    for (int k = 0; k < kV; ++k) gx += to_f32(dv[i].v[k]) * w1[k] * to_f32(xv[i].v[k]);
  }
  gx = warp_sum(gx);
  const float kk = rs * rs * rs * gx / float(p.cols);
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int64_t v = lane + 32 * i;
    if (v >= nv) break;
    float w1[kV];
    load_w8(w, v, w1);
    Vec<T, kV> o;
    if (accumulate) o = dxr[v];
#pragma unroll
    for (int k = 0; k < kV; ++k) {
      float val = to_f32(dv[i].v[k]) * w1[k] * rs - to_f32(xv[i].v[k]) * kk;
      if (accumulate) val += to_f32(o.v[k]);
      o.v[k] = from_f32<T>(val);
    }
    dxr[v] = o;
  }
}

// Calls f(std::integral_constant<int, NV>{}) with the smallest NV in {1, 2, 4, 8, 12, 16} that holds a lane's
// vectors of a row, cols <= 32 * 8 * 16 (vec_resident).
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
bool vec_rows(std::initializer_list<TensorView> ts, int64_t cols) {
  return cols % kV == 0 && cols <= 32 * kV * 16 && vec8_aligned(ts);
}

int block_for(int64_t cols) {
  // Enough threads to cover short rows without idle warps; 256 for long rows.
  int b = 32;
  while (b < kBlock && b < cols) b *= 2;
  return b;
}

}  // namespace

namespace cuda {

void rmsnorm_forward(TensorView y, TensorView rstd, TensorView x, TensorView w, const RmsNormParams& p,
                     cudaStream_t stream) {
  rmsnorm_check(y, rstd, x, w, p);
  ENGINE_CHECK(w.dtype == DType::kF32 && rstd.dtype == DType::kF32, "rmsnorm (cuda): w and rstd must be f32");
  if (p.rows == 0) return;
  if (vec_rows({y, x, w}, p.cols)) {
    const unsigned grid = unsigned((p.rows + kRowsPerBlock - 1) / kRowsPerBlock);
    OPS_DISPATCH_FLOAT(x.dtype, T, dispatch_nv(p.cols, [&](auto nv) {
      rmsnorm_forward_vec_kernel<T, decltype(nv)::value><<<grid, 32 * kRowsPerBlock, 0, stream>>>(
          y.ptr<T>(), rstd.ptr<float>(), x.ptr<const T>(), w.ptr<const float>(), p);
    }));
    CUDA_CHECK_LAST();
    return;
  }
  OPS_DISPATCH_FLOAT(x.dtype, T,
    rmsnorm_forward_kernel<T><<<unsigned(p.rows), block_for(p.cols), 0, stream>>>(
        y.ptr<T>(), rstd.ptr<float>(), x.ptr<const T>(), w.ptr<const float>(), p));
  CUDA_CHECK_LAST();
}

void rmsnorm_backward(TensorView dx, Accum dx_mode, TensorView dw, TensorView dy, TensorView x, TensorView w,
                      TensorView rstd, const RmsNormParams& p, cudaStream_t stream) {
  rmsnorm_check(dy, rstd, x, w, p);
  ENGINE_CHECK(dx.numel() == x.numel() && dx.dtype == x.dtype, "rmsnorm: dx ", dx.str(), " must match x ", x.str());
  ENGINE_CHECK(!dw.defined() || (dw.numel() == p.cols && dw.dtype == DType::kF32), "rmsnorm: dw ", dw.str(),
               " must be f32 with cols=", p.cols);
  if (p.rows == 0) return;
  if (!dw.defined() && vec_rows({dx, dy, x, w}, p.cols)) {
    const unsigned grid = unsigned((p.rows + kRowsPerBlock - 1) / kRowsPerBlock);
    OPS_DISPATCH_FLOAT(x.dtype, T, dispatch_nv(p.cols, [&](auto nv) {
      rmsnorm_backward_vec_kernel<T, decltype(nv)::value><<<grid, 32 * kRowsPerBlock, 0, stream>>>(
          dx.ptr<T>(), dx_mode == Accum::kAdd, dy.ptr<const T>(), x.ptr<const T>(), w.ptr<const float>(),
          rstd.ptr<const float>(), p);
    }));
    CUDA_CHECK_LAST();
    return;
  }
  const size_t smem = dw.defined() ? size_t(p.cols) * sizeof(float) : 0;
  ENGINE_CHECK(smem <= 48 * 1024, "rmsnorm backward: cols=", p.cols, " exceeds the shared-memory dw buffer");
  const int sms = sm_count();
  // With dw, cap the grid so each block amortises its dw flush over many rows; without, one block per row.
  const int64_t grid = dw.defined() ? std::min<int64_t>(p.rows, 4 * int64_t(sms)) : p.rows;
  OPS_DISPATCH_FLOAT(x.dtype, T,
    rmsnorm_backward_kernel<T><<<unsigned(grid), block_for(p.cols), smem, stream>>>(
        dx.ptr<T>(), dx_mode == Accum::kAdd, dw.ptr<float>(), dy.ptr<const T>(), x.ptr<const T>(),
        w.ptr<const float>(), rstd.ptr<const float>(), p));
  CUDA_CHECK_LAST();
}

}  // namespace cuda
}  // namespace ops
