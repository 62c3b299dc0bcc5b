// ops/elementwise.cu: add, scale, cast, accumulate. Two grid-stride kernel templates (one and two inputs)
// applied to small f32 functors; 8-element vectors (16 bytes of f16/bf16, 32 of f32) when every pointer is
// aligned, then a scalar tail. No __restrict__: in-place calls alias out with an input (same index only).
// Instantiations: add 3 dtypes, scale/cast/accumulate-set 3x3 (one Scale functor), accumulate-add 3x3.
#include <algorithm>

#include "ops/cuda_common.cuh"
#include "ops/elementwise.h"

namespace ops {
namespace {

constexpr int kVec = 8;
constexpr int kBlock = 256;


struct Add {
  __device__ float operator()(float a, float b) const { return a + b; }
};
// Multiplying by 1 is exact, so cast is Scale{1}.
struct Scale {
  float alpha;
  __device__ float operator()(float x) const { return alpha * x; }
};
// out + alpha * x with one f32 rounding.
struct Axpy {
  float alpha;
  __device__ float operator()(float out, float x) const { return fmaf(alpha, x, out); }
};

// out[i] = op(x[i]); vectors [0, nvec), then scalars [nvec * kVec, n).
template <typename TO, typename TX, typename Op>
__global__ void unary_kernel(TO* out, const TX* x, int64_t n, int64_t nvec, Op op) {
  const int64_t t0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t v = t0; v < nvec; v += stride) {
    const Vec<TX, kVec> xv = reinterpret_cast<const Vec<TX, kVec>*>(x)[v];
    Vec<TO, kVec> o;
#pragma unroll
    for (int k = 0; k < kVec; ++k) o.v[k] = from_f32<TO>(op(to_f32(xv.v[k])));
    reinterpret_cast<Vec<TO, kVec>*>(out)[v] = o;
  }
  for (int64_t i = nvec * kVec + t0; i < n; i += stride) out[i] = from_f32<TO>(op(to_f32(x[i])));
}

// out[i] = op(a[i], b[i]); same layout of work as unary_kernel.
template <typename TO, typename TA, typename TB, typename Op>
__global__ void binary_kernel(TO* out, const TA* a, const TB* b, int64_t n, int64_t nvec, Op op) {
  const int64_t t0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t v = t0; v < nvec; v += stride) {
    const Vec<TA, kVec> av = reinterpret_cast<const Vec<TA, kVec>*>(a)[v];
    const Vec<TB, kVec> bv = reinterpret_cast<const Vec<TB, kVec>*>(b)[v];
    Vec<TO, kVec> o;
#pragma unroll
    for (int k = 0; k < kVec; ++k) o.v[k] = from_f32<TO>(op(to_f32(av.v[k]), to_f32(bv.v[k])));
    reinterpret_cast<Vec<TO, kVec>*>(out)[v] = o;
  }
  for (int64_t i = nvec * kVec + t0; i < n; i += stride) out[i] = from_f32<TO>(op(to_f32(a[i]), to_f32(b[i])));
}

template <typename T>
bool vec_aligned(const T* p) { return reinterpret_cast<uintptr_t>(p) % sizeof(Vec<T, kVec>) == 0; }

// Enough blocks for one work item per thread, capped at 16 blocks per SM (full occupancy; the grid-stride
// loop takes the rest).
unsigned grid_for(int64_t items) {
  const int sms = sm_count();
  return unsigned(std::max<int64_t>(1, std::min<int64_t>((items + kBlock - 1) / kBlock, 16 * int64_t(sms))));
}

template <typename TO, typename TX, typename Op>
void launch_unary(TO* out, const TX* x, int64_t n, Op op, cudaStream_t stream) {
  const int64_t nvec = vec_aligned(out) && vec_aligned(x) ? n / kVec : 0;
  unary_kernel<<<grid_for(std::max(nvec, n - nvec * kVec)), kBlock, 0, stream>>>(out, x, n, nvec, op);
  CUDA_CHECK_LAST();
}

template <typename TO, typename TA, typename TB, typename Op>
void launch_binary(TO* out, const TA* a, const TB* b, int64_t n, Op op, cudaStream_t stream) {
  const int64_t nvec = vec_aligned(out) && vec_aligned(a) && vec_aligned(b) ? n / kVec : 0;
  binary_kernel<<<grid_for(std::max(nvec, n - nvec * kVec)), kBlock, 0, stream>>>(out, a, b, n, nvec, op);
  CUDA_CHECK_LAST();
}

}  // namespace

namespace cuda {

void add(TensorView out, TensorView a, TensorView b, cudaStream_t stream) {
  elementwise_check("add", out, {a, b}, true);
  if (out.numel() == 0) return;
  OPS_DISPATCH_FLOAT(out.dtype, T,
    launch_binary(out.ptr<T>(), a.ptr<const T>(), b.ptr<const T>(), out.numel(), Add{}, stream));
}

void scale(TensorView out, TensorView x, float alpha, cudaStream_t stream) {
  elementwise_check("scale", out, {x}, true);
  if (out.numel() == 0) return;
  OPS_DISPATCH_FLOAT(out.dtype, T, launch_unary(out.ptr<T>(), x.ptr<const T>(), out.numel(), Scale{alpha}, stream));
}

void cast(TensorView out, TensorView in, cudaStream_t stream) {
  elementwise_check("cast", out, {in}, false);
  if (out.numel() == 0 || out.data == in.data) return;  // same buffer: elementwise_check ensured same dtype
  if (out.dtype == in.dtype) {
    CUDA_CHECK(cudaMemcpyAsync(out.data, in.data, out.nbytes(), cudaMemcpyDeviceToDevice, stream));
    return;
  }
  OPS_DISPATCH_FLOAT(out.dtype, TO, OPS_DISPATCH_FLOAT(in.dtype, TX,
    launch_unary(out.ptr<TO>(), in.ptr<const TX>(), out.numel(), Scale{1.f}, stream)));
}

void accumulate(TensorView out, TensorView x, float alpha, Accum mode, cudaStream_t stream) {
  elementwise_check("accumulate", out, {x}, false);
  if (out.numel() == 0) return;
  // kSet is a scaled cast and never reads out; kAdd reads out as the first operand.
  OPS_DISPATCH_FLOAT(out.dtype, TO, OPS_DISPATCH_FLOAT(x.dtype, TX, {
    if (mode == Accum::kAdd)
      launch_binary(out.ptr<TO>(), out.ptr<const TO>(), x.ptr<const TX>(), out.numel(), Axpy{alpha}, stream);
    else
      launch_unary(out.ptr<TO>(), x.ptr<const TX>(), out.numel(), Scale{alpha}, stream);
  }));
}

}  // namespace cuda
}  // namespace ops
