// ops/dropout.cu: LoRA dropout kernels (SPEC.md §4.1). One Philox counter yields the 16-bit randoms of 8
// consecutive stream indices (engine/philox.h). Fast path (both pointers 8-element aligned): a thread owns
// 8 consecutive elements, moved as one vector, whose randoms come from one counter (two when offset % 8 !=
// 0; the shift is a template parameter so the selection stays in registers). Otherwise one thread per
// element with scalar accesses. Both give the same values (same randoms, same f32 math).
#include <algorithm>
#include <cstdint>

#include "engine/philox.h"
#include "ops/cuda_common.cuh"
#include "ops/dropout.h"

namespace ops {
namespace {

constexpr int kBlock = 256, kV = 8;

// keep ? x * scale : 0 (+ old), one f32 rounding to TO.
template <typename TO>
__device__ __forceinline__ TO drop_one(float x, bool keep, float scale, bool accumulate, TO old) {
  float v = keep ? __fmul_rn(x, scale) : 0.f;
  if (accumulate) v = __fadd_rn(v, to_f32(old));
  return from_f32<TO>(v);
}

// Thread t owns elements [8t, 8t + 8): stream indices offset + 8t ..., all at offset % 8 == SH in their
// counter. The scalar tail [nvec * 8, n) draws one counter per element.
template <typename TO, typename TI, bool kDrop, int SH>
__global__ void dropout_vec_kernel(TO* out, bool accumulate, const TI* in, DropoutParams p, float scale,
                                   int64_t nvec) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < nvec; t += stride) {
    const unsigned keep = kDrop ? engine::dropout_keep8<SH>(p.seed, p.stream, p.offset + uint64_t(t) * kV, p.p) : 0xFFu;
    const Vec<TI, kV> x = reinterpret_cast<const Vec<TI, kV>*>(in)[t];
    Vec<TO, kV> o;
    if (accumulate) o = reinterpret_cast<const Vec<TO, kV>*>(out)[t];
#pragma unroll
    for (int k = 0; k < kV; ++k) o.v[k] = drop_one<TO>(to_f32(x.v[k]), (keep >> k) & 1u, scale, accumulate, o.v[k]);
    reinterpret_cast<Vec<TO, kV>*>(out)[t] = o;
  }
  for (int64_t i = nvec * kV + int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n; i += stride) {
    const bool keep = !kDrop || engine::dropout_keep(engine::philox_u16(p.seed, p.stream, p.offset + uint64_t(i)), p.p);
    out[i] = drop_one<TO>(to_f32(in[i]), keep, scale, accumulate, accumulate ? out[i] : TO{});
  }
}

void launch(TensorView out, bool accumulate, TensorView in, const DropoutParams& p, cudaStream_t stream) {
  if (p.n == 0) return;
  const float scale = 1.0f / (1.0f - p.p);
  const int sms = sm_count();
  // Misaligned pointers: no vectors, every element in the scalar loop.
  const int64_t nvec = vec8_aligned({out, in}) ? p.n / kV : 0;
  const int64_t threads = std::max<int64_t>(nvec, nvec == 0 ? p.n : 1);
  const unsigned grid =
      unsigned(std::max<int64_t>(1, std::min<int64_t>((threads + kBlock - 1) / kBlock, 16 * int64_t(sms))));
  OPS_DISPATCH_FLOAT(out.dtype, TO, OPS_DISPATCH_FLOAT(in.dtype, TI,
    if (p.p > 0.0f) {
      dispatch_mod8(p.offset, [&](auto sh) {
        dropout_vec_kernel<TO, TI, true, decltype(sh)::value><<<grid, kBlock, 0, stream>>>(
            out.ptr<TO>(), accumulate, in.ptr<const TI>(), p, scale, nvec);
      });
    } else {
      dropout_vec_kernel<TO, TI, false, 0><<<grid, kBlock, 0, stream>>>(out.ptr<TO>(), accumulate,
                                                                         in.ptr<const TI>(), p, scale, nvec);
    }));
  CUDA_CHECK_LAST();
}

}  // namespace

namespace cuda {

void dropout_forward(TensorView y, TensorView x, const DropoutParams& p, cudaStream_t stream) {
  dropout_check(y, x, p);
  launch(y, false, x, p, stream);
}

void dropout_backward(TensorView dx, Accum dx_mode, TensorView dy, const DropoutParams& p, cudaStream_t stream) {
  dropout_check(dx, dy, p);
  launch(dx, dx_mode == Accum::kAdd, dy, p, stream);
}

}  // namespace cuda
}  // namespace ops
