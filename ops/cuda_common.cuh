// ops/cuda_common.cuh: helpers shared by the CUDA op files: dtype <-> C++ type mapping, float
// conversion, warp/block reductions, and the launcher boilerplate.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "engine/check.h"
#include "engine/tensor.h"

namespace ops {

template <typename T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// V elements of T moved as one aligned access (16 bytes of f16/bf16 at V = 8; f32 at V = 8 is two 16-byte
// accesses). Callers check the alignment of every pointer they cast.
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block; every thread gets the result. `smem` holds at least 32 floats.
__device__ __forceinline__ float block_sum(float v, float* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // smem may still be read by a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = lane < nwarps ? smem[lane] : 0.f;
  return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = lane < nwarps ? smem[lane] : -INFINITY;
  return warp_max(v);
}

// Streaming multiprocessors of the current device (grid sizes that fill every SM a few times over).
inline int sm_count() {
  int dev = 0, sms = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return sms;
}

// Calls f(std::integral_constant<int, v>{}) with v = value % 8 as a compile-time constant (e.g. the position
// of an 8-element vector within a Philox counter of dropout randoms, engine/philox.h).
template <typename F>
void dispatch_mod8(uint64_t value, F f) {
  using std::integral_constant;
  switch (value & 7) {
    case 0: f(integral_constant<int, 0>{}); break;
    case 1: f(integral_constant<int, 1>{}); break;
    case 2: f(integral_constant<int, 2>{}); break;
    case 3: f(integral_constant<int, 3>{}); break;
    case 4: f(integral_constant<int, 4>{}); break;
    case 5: f(integral_constant<int, 5>{}); break;
    case 6: f(integral_constant<int, 6>{}); break;
    default: f(integral_constant<int, 7>{});
  }
}

}  // namespace ops

// Runs `__VA_ARGS__` with `T` bound to the C++ type of a float dtype (f32, f16, bf16).
#define OPS_DISPATCH_FLOAT(dtype, T, ...)                                                   \
  switch (dtype) {                                                                          \
    case ::engine::DType::kF32: { using T = float; __VA_ARGS__; break; }                    \
    case ::engine::DType::kF16: { using T = __half; __VA_ARGS__; break; }                   \
    case ::engine::DType::kBF16: { using T = __nv_bfloat16; __VA_ARGS__; break; }           \
    default: ENGINE_CHECK(false, "unsupported dtype ", ::engine::dtype_name(dtype));        \
  }
