// ops/global_norm.cu: deterministic sum of squares and the clip coefficient (SPEC.md §5.3, §5.4).
//   Stage 1: detail::global_norm_grid(n) blocks grid-stride over x (float4 when x is 16-byte aligned), each
//   writes one partial sum. Stage 2: one block sums the partials in a fixed order and adds to sumsq. The grid
//   depends on n only and nothing is atomic, so the bits are the same on every run.
#include <cstdint>

#include "ops/cuda_common.cuh"
#include "ops/global_norm.h"

namespace ops {
namespace {

using detail::kGlobalNormBlock;

template <bool kVec>
__global__ void sumsq_partial_kernel(float* __restrict__ partial, const float* __restrict__ x, int64_t n) {
  __shared__ float smem[32];
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  float acc = 0.f;
  int64_t scalar_begin = 0;
  if (kVec) {
    const int64_t n4 = n / 4;
#pragma unroll 4
    for (int64_t j = i; j < n4; j += stride) {
      const float4 q = reinterpret_cast<const float4*>(x)[j];
      acc += q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w;
    }
    scalar_begin = n4 * 4;
  }
  for (int64_t j = scalar_begin + i; j < n; j += stride) acc += x[j] * x[j];
  acc = block_sum(acc, smem);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void sumsq_final_kernel(float* __restrict__ sumsq, const float* __restrict__ partial, int64_t count) {
  __shared__ float smem[32];
  float acc = 0.f;
  for (int64_t j = threadIdx.x; j < count; j += blockDim.x) acc += partial[j];
  acc = block_sum(acc, smem);
  if (threadIdx.x == 0) *sumsq += acc;
}

__global__ void clip_coefficient_kernel(float* __restrict__ grad_scale, float* __restrict__ norm,
                                        int32_t* __restrict__ found_inf, const float* __restrict__ sumsq,
                                        ClipParams p) {
  // Same f32 operations, in the same order, as ops::cpu::clip_coefficient (IEEE sqrt and division).
  const float ss = *sumsq;
  const float nrm = __fmul_rn(__fsqrt_rn(ss), p.inv_loss_scale);
  const float c = __fmul_rn(p.max_norm, __fdiv_rn(1.0f, __fadd_rn(nrm, 1e-6f)));
  const float coef = p.max_norm > 0.0f && c < 1.0f ? c : 1.0f;
  *norm = nrm;
  *grad_scale = __fmul_rn(p.inv_loss_scale, coef);
  *found_inf = isfinite(ss) ? 0 : 1;
}

}  // namespace

namespace cuda {

void global_norm_sumsq(TensorView sumsq, TensorView x, TensorView workspace, cudaStream_t stream) {
  global_norm_check(sumsq, x);
  ENGINE_CHECK(x.dtype == DType::kF32 && sumsq.dtype == DType::kF32, "global_norm (cuda): x ", x.str(),
               " and sumsq ", sumsq.str(), " must be f32");
  const int64_t n = x.numel();
  if (n == 0) return;
  ENGINE_CHECK(workspace.defined() && workspace.nbytes() >= global_norm_workspace_bytes(n), "global_norm: workspace ",
               workspace.str(), " smaller than global_norm_workspace_bytes(", n, ")=", global_norm_workspace_bytes(n));
  const int64_t grid = detail::global_norm_grid(n);
  float* partial = workspace.ptr<float>();
  if (reinterpret_cast<uintptr_t>(x.data) % 16 == 0)
    sumsq_partial_kernel<true><<<unsigned(grid), kGlobalNormBlock, 0, stream>>>(partial, x.ptr<const float>(), n);
  else
    sumsq_partial_kernel<false><<<unsigned(grid), kGlobalNormBlock, 0, stream>>>(partial, x.ptr<const float>(), n);
  CUDA_CHECK_LAST();
  sumsq_final_kernel<<<1, kGlobalNormBlock, 0, stream>>>(sumsq.ptr<float>(), partial, grid);
  CUDA_CHECK_LAST();
}

void clip_coefficient(TensorView grad_scale, TensorView norm, TensorView found_inf, TensorView sumsq,
                      const ClipParams& p, cudaStream_t stream) {
  clip_coefficient_check(grad_scale, norm, found_inf, sumsq);
  clip_coefficient_kernel<<<1, 1, 0, stream>>>(grad_scale.ptr<float>(), norm.ptr<float>(),
                                                found_inf.ptr<int32_t>(), sumsq.ptr<const float>(), p);
  CUDA_CHECK_LAST();
}

}  // namespace cuda
}  // namespace ops
