// ops/geglu.cu: GeGLU kernels (SPEC.md §1.5). Elementwise over (N, F): blockIdx.y walks rows (so strided
// gate/up rows need no index division), threads walk V-element vectors of a row (16 bytes when aligned).
// gelu_tanh follows the expression order of torch's CUDA GeluKernel (tanh approximation) in f32.
#include <algorithm>
#include <cstdint>

#include "ops/cuda_common.cuh"
#include "ops/geglu.h"

namespace ops {
namespace {

constexpr int kBlock = 128;  // F = 9216 bf16 is 1152 vectors: 9 full blocks per row
constexpr float kBeta = float(M_SQRT2 * M_2_SQRTPI * 0.5);  // sqrt(2/pi)
constexpr float kKappa = 0.044715f;

__device__ __forceinline__ float gelu_tanh(float x) {
  const float inner = kBeta * (x + kKappa * (x * x * x));
  return 0.5f * x * (1.f + tanhf(inner));
}

__device__ __forceinline__ float gelu_tanh_grad(float x) {
  const float x_sq = x * x;
  const float t = tanhf(kBeta * (x + kKappa * (x_sq * x)));
  return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * (kBeta * (1.f + 3.f * kKappa * x_sq));
}

template <typename T, int V>
__global__ void geglu_forward_kernel(T* __restrict__ out, const T* __restrict__ gate, const T* __restrict__ up,
                                     int64_t rows, int64_t cols, int64_t stride) {
  using VecT = Vec<T, V>;
  const int64_t cv = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (cv >= cols) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const VecT g = *reinterpret_cast<const VecT*>(gate + r * stride + cv);
    const VecT u = *reinterpret_cast<const VecT*>(up + r * stride + cv);
    VecT o;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const T a = from_f32<T>(gelu_tanh(to_f32(g.v[j])));  // rounded once, as torch's half kernel
      o.v[j] = from_f32<T>(to_f32(a) * to_f32(u.v[j]));
    }
    *reinterpret_cast<VecT*>(out + r * cols + cv) = o;
  }
}

template <typename T, int V>
__global__ void geglu_backward_kernel(T* __restrict__ dgate, bool dgate_add, T* __restrict__ dup, bool dup_add,
                                      const T* __restrict__ dout, const T* __restrict__ gate,
                                      const T* __restrict__ up, int64_t rows, int64_t cols, int64_t stride) {
  using VecT = Vec<T, V>;
  const int64_t cv = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (cv >= cols) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const int64_t i = r * stride + cv;
    const VecT g = *reinterpret_cast<const VecT*>(gate + i);
    const VecT u = *reinterpret_cast<const VecT*>(up + i);
    const VecT d = *reinterpret_cast<const VecT*>(dout + r * cols + cv);
    VecT dg, du;
    if (dgate_add) dg = *reinterpret_cast<const VecT*>(dgate + i);
    if (dup_add) du = *reinterpret_cast<const VecT*>(dup + i);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float x = to_f32(g.v[j]), dv = to_f32(d.v[j]);
      float vg = dv * to_f32(u.v[j]) * gelu_tanh_grad(x);
      float vu = dv * to_f32(from_f32<T>(gelu_tanh(x)));  // the rounded activation the forward used
      if (dgate_add) vg += to_f32(dg.v[j]);
      if (dup_add) vu += to_f32(du.v[j]);
      dg.v[j] = from_f32<T>(vg);
      du.v[j] = from_f32<T>(vu);
    }
    *reinterpret_cast<VecT*>(dgate + i) = dg;
    *reinterpret_cast<VecT*>(dup + i) = du;
  }
}

bool aligned16(std::initializer_list<TensorView> ts) {
  for (const TensorView& t : ts)
    if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) return false;
  return true;
}

// 16-byte vectors when every row start of every tensor is 16-byte aligned; else one element per thread.
template <typename T>
bool use_vec(const GegluParams& p, int64_t stride, std::initializer_list<TensorView> ts) {
  constexpr int64_t kVec = 16 / sizeof(T);
  return p.cols % kVec == 0 && stride % kVec == 0 && aligned16(ts);
}

dim3 grid_for(const GegluParams& p, int v) {
  const int64_t vecs = p.cols / v;
  return dim3(unsigned((vecs + kBlock - 1) / kBlock), unsigned(std::min<int64_t>(p.rows, 65535)));
}

}  // namespace

namespace cuda {

void geglu_forward(TensorView out, TensorView gate, TensorView up, const GegluParams& p, cudaStream_t stream) {
  geglu_check(out, gate, up, p);
  if (p.rows == 0 || p.cols == 0) return;
  const int64_t stride = p.in_stride < 0 ? p.cols : p.in_stride;
  OPS_DISPATCH_FLOAT(gate.dtype, T, {
    constexpr int kVec = 16 / sizeof(T);
    if (use_vec<T>(p, stride, {out, gate, up}))
      geglu_forward_kernel<T, kVec><<<grid_for(p, kVec), kBlock, 0, stream>>>(
          out.ptr<T>(), gate.ptr<const T>(), up.ptr<const T>(), p.rows, p.cols, stride);
    else
      geglu_forward_kernel<T, 1><<<grid_for(p, 1), kBlock, 0, stream>>>(
          out.ptr<T>(), gate.ptr<const T>(), up.ptr<const T>(), p.rows, p.cols, stride);
  });
  CUDA_CHECK_LAST();
}

void geglu_backward(TensorView dgate, Accum dgate_mode, TensorView dup, Accum dup_mode, TensorView dout,
                    TensorView gate, TensorView up, const GegluParams& p, cudaStream_t stream) {
  geglu_check(dout, gate, up, p);
  geglu_check(dout, dgate, dup, p);
  if (p.rows == 0 || p.cols == 0) return;
  const int64_t stride = p.in_stride < 0 ? p.cols : p.in_stride;
  const bool gadd = dgate_mode == Accum::kAdd, uadd = dup_mode == Accum::kAdd;
  OPS_DISPATCH_FLOAT(gate.dtype, T, {
    constexpr int kVec = 16 / sizeof(T);
    if (use_vec<T>(p, stride, {dgate, dup, dout, gate, up}))
      geglu_backward_kernel<T, kVec><<<grid_for(p, kVec), kBlock, 0, stream>>>(
          dgate.ptr<T>(), gadd, dup.ptr<T>(), uadd, dout.ptr<const T>(), gate.ptr<const T>(), up.ptr<const T>(),
          p.rows, p.cols, stride);
    else
      geglu_backward_kernel<T, 1><<<grid_for(p, 1), kBlock, 0, stream>>>(
          dgate.ptr<T>(), gadd, dup.ptr<T>(), uadd, dout.ptr<const T>(), gate.ptr<const T>(), up.ptr<const T>(),
          p.rows, p.cols, stride);
  });
  CUDA_CHECK_LAST();
}

}  // namespace cuda
}  // namespace ops
