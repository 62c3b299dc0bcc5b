// ops/attention_layout.cu: the permutes as a plain copy of hd-element head rows, in the widest unit
// (16/8/4/2 bytes) that divides a head row and both base addresses. One thread per unit, indexed in dst
// order so writes coalesce; reads are contiguous within each head row.
#include <cstdint>

#include "ops/attention_layout.h"
#include "ops/cuda_common.cuh"

namespace ops {
namespace {

constexpr int kBlock = 256;

template <typename U, bool kHeadMajorDst>
__global__ void attention_permute_kernel(U* __restrict__ dst, const U* __restrict__ src, int64_t n,
                                         int64_t units_per_row, AttentionLayoutParams p) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n) return;
  const int64_t u = idx % units_per_row;
  int64_t r = idx / units_per_row;
  int64_t b, t, h;
  if (kHeadMajorDst) {  // idx walks (B,heads,T)
    t = r % p.seq; r /= p.seq; h = r % p.heads; b = r / p.heads;
  } else {              // idx walks (B,T,heads)
    h = r % p.heads; r /= p.heads; t = r % p.seq; b = r / p.seq;
  }
  const int64_t src_row = kHeadMajorDst ? (b * p.seq + t) * p.heads + h : (b * p.heads + h) * p.seq + t;
  dst[idx] = src[src_row * units_per_row + u];
}

template <typename U>
void launch(TensorView dst, TensorView src, const AttentionLayoutParams& p, bool head_major_dst,
            cudaStream_t stream) {
  const int64_t units_per_row = p.head_dim * int64_t(dtype_size(src.dtype)) / int64_t(sizeof(U));
  const int64_t n = p.batch * p.seq * p.heads * units_per_row;
  const unsigned grid = unsigned((n + kBlock - 1) / kBlock);
  if (head_major_dst)
    attention_permute_kernel<U, true><<<grid, kBlock, 0, stream>>>(dst.ptr<U>(), src.ptr<const U>(), n,
                                                                    units_per_row, p);
  else
    attention_permute_kernel<U, false><<<grid, kBlock, 0, stream>>>(dst.ptr<U>(), src.ptr<const U>(), n,
                                                                     units_per_row, p);
  CUDA_CHECK_LAST();
}

void permute(TensorView dst, TensorView src, const AttentionLayoutParams& p, bool head_major_dst,
             cudaStream_t stream) {
  attention_layout_check(dst, src, p);
  check_dtype(src, {DType::kF32, DType::kF16, DType::kBF16}, "attention layout (cuda) src");
  if (src.numel() == 0) return;
  const uintptr_t bytes_per_row = uintptr_t(p.head_dim) * dtype_size(src.dtype);
  const uintptr_t bits = bytes_per_row | reinterpret_cast<uintptr_t>(dst.data) | reinterpret_cast<uintptr_t>(src.data);
  if (bits % 16 == 0) launch<uint4>(dst, src, p, head_major_dst, stream);
  else if (bits % 8 == 0) launch<uint2>(dst, src, p, head_major_dst, stream);
  else if (bits % 4 == 0) launch<uint32_t>(dst, src, p, head_major_dst, stream);
  else launch<uint16_t>(dst, src, p, head_major_dst, stream);
}

}  // namespace

namespace cuda {
void attention_to_head_major(TensorView dst, TensorView src, const AttentionLayoutParams& p, cudaStream_t stream) {
  permute(dst, src, p, true, stream);
}
void attention_to_token_major(TensorView dst, TensorView src, const AttentionLayoutParams& p, cudaStream_t stream) {
  permute(dst, src, p, false, stream);
}
}  // namespace cuda
}  // namespace ops
