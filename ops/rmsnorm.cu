// ops/rmsnorm.cu: Gemma RMSNorm kernels, f32 math throughout (SPEC.md §1.2). Rows of 8-element vectors
// (cols % 8 == 0, cols <= 4096, aligned pointers: every activation of Gemma-2 2B/9B): one warp per row with
// the row in registers, 16-byte accesses, the row sum in shuffles only. Otherwise (and for the backward with
// dw): one block per row, scalar accesses.
#include "ops/cuda_common.cuh"
#include "ops/rmsnorm.h"
#include "ops/rmsnorm_row.cuh"

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

// A warp per row with the row in registers (ops/rmsnorm_row.cuh), all loads in flight together: one read of
// x, and small batches are latency-bound.
template <typename T, int NV>
__global__ void __launch_bounds__(32 * rmsrow::kRowsPerBlock) rmsnorm_forward_vec_kernel(T* __restrict__ y,
    float* __restrict__ rstd, const T* __restrict__ x, const float* __restrict__ w, RmsNormParams p) {
  const int64_t row = int64_t(blockIdx.x) * rmsrow::kRowsPerBlock + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= p.rows) return;
  const int64_t nv = p.cols / rmsrow::kV;
  Vec<T, rmsrow::kV> xv[NV];
  rmsrow::load(xv, x + row * p.cols, nv, lane);
  const float rs = rmsrow::rstd(xv, nv, lane, p.cols, p.eps);
  if (lane == 0) rstd[row] = rs;
  Vec<T, rmsrow::kV>* yr = reinterpret_cast<Vec<T, rmsrow::kV>*>(y + row * p.cols);
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int64_t v = lane + 32 * i;
    if (v >= nv) break;
    yr[v] = rmsrow::normed(xv[i], w, v, rs);
  }
}

// dx only (frozen norm weights: every QLoRA run); x and dy rows in registers as in the forward.
template <typename T, int NV>
__global__ void __launch_bounds__(32 * rmsrow::kRowsPerBlock) rmsnorm_backward_vec_kernel(T* __restrict__ dx,
    bool accumulate, const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ w,
    const float* __restrict__ rstd, RmsNormParams p) {
  const int64_t row = int64_t(blockIdx.x) * rmsrow::kRowsPerBlock + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= p.rows) return;
  const int64_t nv = p.cols / rmsrow::kV;
  const float rs = rstd[row];
  Vec<T, rmsrow::kV> xv[NV], dv[NV];
  rmsrow::load(xv, x + row * p.cols, nv, lane);
  rmsrow::load(dv, dy + row * p.cols, nv, lane);
  const float kk = rmsrow::grad_coef(dv, xv, w, nv, lane, p.cols, rs);
  Vec<T, rmsrow::kV>* dxr = reinterpret_cast<Vec<T, rmsrow::kV>*>(dx + row * p.cols);
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int64_t v = lane + 32 * i;
    if (v >= nv) break;
    float val[rmsrow::kV];
    rmsrow::grad(val, dv[i], xv[i], w, v, rs, kk);
    Vec<T, rmsrow::kV> o;
    if (accumulate) o = dxr[v];
#pragma unroll
    for (int k = 0; k < rmsrow::kV; ++k) o.v[k] = from_f32<T>(accumulate ? val[k] + to_f32(o.v[k]) : val[k]);
    dxr[v] = o;
  }
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
  if (rmsrow::vec_rows({y, x, w}, p.cols)) {
    OPS_DISPATCH_FLOAT(x.dtype, T, rmsrow::dispatch_nv(p.cols, [&](auto nv) {
      rmsnorm_forward_vec_kernel<T, decltype(nv)::value><<<rmsrow::grid_for(p.rows), 32 * rmsrow::kRowsPerBlock, 0,
                                                           stream>>>(
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
  if (!dw.defined() && rmsrow::vec_rows({dx, dy, x, w}, p.cols)) {
    OPS_DISPATCH_FLOAT(x.dtype, T, rmsrow::dispatch_nv(p.cols, [&](auto nv) {
      rmsnorm_backward_vec_kernel<T, decltype(nv)::value><<<rmsrow::grid_for(p.rows), 32 * rmsrow::kRowsPerBlock, 0,
                                                            stream>>>(
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
