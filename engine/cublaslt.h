// engine/cublaslt.h: the only owner of cuBLASLt state (handle, workspace, algorithm cache).
//   Row-major GEMM: C(m,n) = alpha * op(A)(m,k) @ op(B)(k,n) + beta * C, f32 accumulation, optionally
//   strided-batched. A and B share a dtype (f32, f16, bf16); C is that dtype or f32.
//   beta = 1 accumulates into C in place. f32 inputs use true f32 math (no TF32), as torch does by default.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <tuple>

#include "engine/allocator.h"
#include "engine/dtype.h"

namespace engine {

struct GemmDesc {
  int64_t m = 0, n = 0, k = 0;
  bool trans_a = false, trans_b = false;  // A stored (k,m) / B stored (n,k) when set
  DType ab_dtype = DType::kF32, c_dtype = DType::kF32;
  int64_t batch = 1;
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;  // elements between batch entries
  float alpha = 1.f, beta = 0.f;
};

class CublasLt {
 public:
  CublasLt(size_t workspace_bytes, Allocator& device_alloc);
  ~CublasLt();
  CublasLt(const CublasLt&) = delete;
  CublasLt& operator=(const CublasLt&) = delete;

  void gemm(const GemmDesc& d, const void* a, const void* b, void* c, cudaStream_t stream);

 private:
  using Key = std::tuple<int64_t, int64_t, int64_t, int, int, int, int, int64_t, int64_t, int64_t,
                         int64_t, int, int>;
  cublasLtHandle_t handle_ = nullptr;
  Allocator& alloc_;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<Key, cublasLtMatmulAlgo_t> algo_cache_;  // heuristic results, so steady state asks nothing
};

}  // namespace engine
