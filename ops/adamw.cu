// ops/adamw.cu: bnb AdamW 32-bit step over flat f32 buffers (SPEC.md §5.5). Elementwise and memory-bound
// (28 bytes per element); float4 accesses when every buffer is 16-byte aligned.
// IEEE intrinsics (__fmaf_rn, __fsqrt_rn, __fdiv_rn, __fmul_rn) pin every rounding whatever the nvcc flags
// (no contraction, no fast-math approximations), so this matches ops/adamw_cpu.cpp bit for bit.
#include <algorithm>
#include <cstdint>

#include "ops/adamw.h"
#include "ops/cuda_common.cuh"

namespace ops {
namespace {

constexpr int kBlock = 256;

struct AdamWArgs {
  float beta1, beta2;
  AdamWScalars s;
  bool decay;  // weight_decay > 0
};

__device__ __forceinline__ void adamw_element(float& p, float& m, float& v, float g, float gs, const AdamWArgs& a) {
  g = __fmul_rn(gs, g);
  m = __fmaf_rn(m, a.beta1, __fmul_rn(a.s.one_minus_beta1, g));
  v = __fmaf_rn(v, a.beta2, __fmul_rn(a.s.one_minus_beta2, __fmul_rn(g, g)));
  p = __fmaf_rn(a.s.step_size, __fdiv_rn(m, __fadd_rn(__fsqrt_rn(v), a.s.eps_c2)), p);
  if (a.decay) p = __fmul_rn(p, a.s.decay);
}

// kVec: 4 elements per access (all buffers 16-byte aligned); the n % 4 tail is done element by element.
template <bool kVec>
__global__ void adamw_kernel(float* __restrict__ param, float* __restrict__ m, float* __restrict__ v,
                             const float* __restrict__ grad, const float* __restrict__ grad_scale,
                             const int32_t* __restrict__ found_inf, int64_t n, AdamWArgs a) {
  if (found_inf != nullptr && *found_inf != 0) return;  // GradScaler skipped this step
  const float gs = grad_scale != nullptr ? *grad_scale : 1.0f;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t scalar_begin = 0;
  if (kVec) {
    const int64_t n4 = n / 4;
    for (int64_t j = i; j < n4; j += stride) {
      float4 p4 = reinterpret_cast<float4*>(param)[j], m4 = reinterpret_cast<float4*>(m)[j],
             v4 = reinterpret_cast<float4*>(v)[j];
      const float4 g4 = reinterpret_cast<const float4*>(grad)[j];
      adamw_element(p4.x, m4.x, v4.x, g4.x, gs, a);
      adamw_element(p4.y, m4.y, v4.y, g4.y, gs, a);
      adamw_element(p4.z, m4.z, v4.z, g4.z, gs, a);
      adamw_element(p4.w, m4.w, v4.w, g4.w, gs, a);
      reinterpret_cast<float4*>(param)[j] = p4;
      reinterpret_cast<float4*>(m)[j] = m4;
      reinterpret_cast<float4*>(v)[j] = v4;
    }
    scalar_begin = n4 * 4;
  }
  for (int64_t j = scalar_begin + i; j < n; j += stride) {
    float pj = param[j], mj = m[j], vj = v[j];
    adamw_element(pj, mj, vj, grad[j], gs, a);
    param[j] = pj;
    m[j] = mj;
    v[j] = vj;
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

namespace cuda {

void adamw_step(TensorView param, TensorView m, TensorView v, TensorView grad, TensorView grad_scale,
                TensorView found_inf, const AdamWParams& p, cudaStream_t stream) {
  adamw_check(param, m, v, grad, grad_scale, found_inf, p);
  if (p.n == 0) return;
  const AdamWArgs a{p.beta1, p.beta2, adamw_scalars(p), p.weight_decay > 0.0f};
  const bool vec = aligned16(param.data) && aligned16(m.data) && aligned16(v.data) && aligned16(grad.data);
  const int sms = sm_count();
  // Enough blocks to fill every SM a few times over; the grid-stride loop covers the rest.
  const int64_t per_block = int64_t(kBlock) * (vec ? 4 : 1);
  const int64_t grid = std::min<int64_t>((p.n + per_block - 1) / per_block, 16 * int64_t(sms));
  if (vec)
    adamw_kernel<true><<<unsigned(grid), kBlock, 0, stream>>>(param.ptr<float>(), m.ptr<float>(), v.ptr<float>(),
        grad.ptr<const float>(), grad_scale.ptr<const float>(), found_inf.ptr<const int32_t>(), p.n, a);
  else
    adamw_kernel<false><<<unsigned(grid), kBlock, 0, stream>>>(param.ptr<float>(), m.ptr<float>(), v.ptr<float>(),
        grad.ptr<const float>(), grad_scale.ptr<const float>(), found_inf.ptr<const int32_t>(), p.n, a);
  CUDA_CHECK_LAST();
}

}  // namespace cuda
}  // namespace ops
