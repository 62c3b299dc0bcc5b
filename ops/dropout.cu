// ops/dropout.cu: LoRA dropout kernels (SPEC.md §4.1). One thread per Philox counter: a counter yields the
// random words of 4 consecutive stream indices, so one Philox call serves 4 elements (offset need not be a
// multiple of 4: the first and last counters are partial). Memory-bound for 16-bit data.
#include <algorithm>
#include <cstdint>

#include "engine/philox.h"
#include "ops/cuda_common.cuh"
#include "ops/dropout.h"

namespace ops {
namespace {

constexpr int kBlock = 256;

// kDrop = false is p = 0: a (converting) copy, no random numbers.
template <typename TO, typename TI, bool kDrop>
__global__ void dropout_kernel(TO* out, bool accumulate, const TI* in, DropoutParams p,
                               float scale) {
  const uint64_t c0 = p.offset >> 2, counters = ((p.offset + uint64_t(p.n) - 1) >> 2) - c0 + 1;
  for (uint64_t t = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < counters;
       t += uint64_t(gridDim.x) * blockDim.x) {
    const uint64_t c = c0 + t;
    engine::Philox4 r{};
    if (kDrop) r = engine::philox4x32_10(p.seed, c, p.stream);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int64_t i = int64_t(4 * c + w - p.offset);  // element index; index 4c+w of the stream
      if (i < 0 || i >= p.n) continue;
      const bool keep = !kDrop || engine::philox_unit(r.v[w]) >= p.p;  // as engine::philox_uniform
      float v = keep ? __fmul_rn(to_f32(in[i]), scale) : 0.f;
      if (accumulate) v = __fadd_rn(v, to_f32(out[i]));
      out[i] = from_f32<TO>(v);
    }
  }
}

void launch(TensorView out, bool accumulate, TensorView in, const DropoutParams& p, cudaStream_t stream) {
  if (p.n == 0) return;
  const float scale = 1.0f / (1.0f - p.p);
  const int64_t counters = int64_t(((p.offset + uint64_t(p.n) - 1) >> 2) - (p.offset >> 2) + 1);
  int dev = 0, sms = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  // One counter per thread until every SM is full a few times over; then grid-stride.
  const unsigned grid = unsigned(std::min<int64_t>((counters + kBlock - 1) / kBlock, 32 * int64_t(sms)));
  OPS_DISPATCH_FLOAT(out.dtype, TO, OPS_DISPATCH_FLOAT(in.dtype, TI,
    if (p.p > 0.0f)
      dropout_kernel<TO, TI, true><<<grid, kBlock, 0, stream>>>(out.ptr<TO>(), accumulate, in.ptr<const TI>(), p, scale);
    else
      dropout_kernel<TO, TI, false><<<grid, kBlock, 0, stream>>>(out.ptr<TO>(), accumulate, in.ptr<const TI>(), p, scale)));
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
