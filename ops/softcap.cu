// ops/softcap.cu: elementwise soft-capping, grid-stride, f32 math, HF's three roundings.
#include "ops/cuda_common.cuh"
#include "ops/softcap.h"

namespace ops {
namespace {

template <typename T>
__global__ void softcap_kernel(T* __restrict__ y, const T* __restrict__ x, int64_t n, float cap, float inv) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float a = to_f32(from_f32<T>(to_f32(x[i]) * inv));
    const float t = to_f32(from_f32<T>(tanhf(a)));
    y[i] = from_f32<T>(t * cap);
  }
}

}  // namespace

namespace cuda {
void softcap(TensorView y, TensorView x, float cap, cudaStream_t stream) {
  softcap_check(y, x, cap);
  const int64_t n = x.numel();
  if (n == 0) return;
  const int block = 256;
  const int64_t grid = std::min<int64_t>((n + block - 1) / block, 65535);
  OPS_DISPATCH_FLOAT(x.dtype, T,
    softcap_kernel<T><<<unsigned(grid), block, 0, stream>>>(y.ptr<T>(), x.ptr<const T>(), n, cap, 1.0f / cap));
  CUDA_CHECK_LAST();
}
}  // namespace cuda

}  // namespace ops
