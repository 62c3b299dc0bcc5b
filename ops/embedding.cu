// ops/embedding.cu: scaled embedding gather and its scatter-add backward (SPEC.md §1.1).
// One block per token row (grid-stride over rows), one thread per 8-element chunk of the row: at D=2304 that
// is 288 threads, each moving one 16-byte bf16 vector, so a row is a single coalesced pass.
#include <algorithm>

#include "ops/cuda_common.cuh"
#include "ops/embedding.h"

namespace ops {
namespace {

constexpr int kVec = 8;  // elements per vector: 16 bytes of bf16/f16, 32 bytes (two 16-byte accesses) of f32


// table element -> output element: one rounding in the table dtype, then out's dtype (a no-op when equal).
template <typename TT, typename TO>
__device__ __forceinline__ TO scaled(TT e, float s) {
  return from_f32<TO>(to_f32(from_f32<TT>(to_f32(e) * s)));
}

// vec: every row starts 16/32-byte aligned and D % kVec == 0, so rows can be moved in Vec chunks.
template <typename TT, typename TO>
__global__ void embedding_forward_kernel(TO* __restrict__ out, const int32_t* __restrict__ ids,
                                         const TT* __restrict__ table, EmbeddingParams p, float s, bool vec) {
  for (int64_t row = blockIdx.x; row < p.tokens; row += gridDim.x) {
    const int32_t id = ids[row];
    const bool valid = 0 <= id && id < p.vocab;  // ids are validated upstream; a bad one gives zeros
    const TT* er = table + (valid ? int64_t(id) : 0) * p.dim;  // (D)
    TO* orow = out + row * p.dim;                               // (D)
    if (vec) {
      for (int64_t j = threadIdx.x; j < p.dim / kVec; j += blockDim.x) {
        Vec<TO, kVec> o;
        if (valid) {
          const Vec<TT, kVec> e = reinterpret_cast<const Vec<TT, kVec>*>(er)[j];
#pragma unroll
          for (int k = 0; k < kVec; ++k) o.v[k] = scaled<TT, TO>(e.v[k], s);
        } else {
#pragma unroll
          for (int k = 0; k < kVec; ++k) o.v[k] = from_f32<TO>(0.f);
        }
        reinterpret_cast<Vec<TO, kVec>*>(orow)[j] = o;
      }
    } else {
      for (int64_t c = threadIdx.x; c < p.dim; c += blockDim.x)
        orow[c] = valid ? scaled<TT, TO>(er[c], s) : from_f32<TO>(0.f);
    }
  }
}

// Scatter-add with one f32 atomic per element: only used when the table is trainable (never in QLoRA).
template <typename TG>
__global__ void embedding_backward_kernel(float* __restrict__ dtable, const TG* __restrict__ dout,
                                          const int32_t* __restrict__ ids, EmbeddingParams p, float s) {
  for (int64_t row = blockIdx.x; row < p.tokens; row += gridDim.x) {
    const int32_t id = ids[row];
    if (id < 0 || id >= p.vocab) continue;  // validated upstream; never write out of bounds
    float* drow = dtable + int64_t(id) * p.dim;  // (D)
    const TG* grow = dout + row * p.dim;         // (D)
    for (int64_t c = threadIdx.x; c < p.dim; c += blockDim.x)
      atomicAdd(&drow[c], to_f32(from_f32<TG>(to_f32(grow[c]) * s)));  // product rounded in dout's dtype
  }
}

bool aligned(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

// Threads cover one row's work items in one pass where possible (<= 1024), in whole warps.
int block_for(int64_t items) { return int(std::min<int64_t>(1024, (std::max<int64_t>(items, 1) + 31) / 32 * 32)); }

// Rows beyond the grid are handled by the grid-stride loop; 65535 blocks keep every SM busy.
unsigned grid_for(int64_t rows) { return unsigned(std::min<int64_t>(rows, 65535)); }

// The normalizer rounded to `t` (f32 on the device), as HF's `embed_scale.to(dtype)`.
float rounded_scale(DType t, float scale) { return float(engine::round_to(t, double(scale))); }

}  // namespace

namespace cuda {

void embedding_forward(TensorView out, TensorView ids, TensorView table, const EmbeddingParams& p,
                       cudaStream_t stream) {
  embedding_check(out, ids, table, p);
  if (p.tokens == 0) return;
  const float s = rounded_scale(table.dtype, p.scale);
  OPS_DISPATCH_FLOAT(table.dtype, TT, OPS_DISPATCH_FLOAT(out.dtype, TO, {
    const bool vec = p.dim % kVec == 0 && aligned(table.data, sizeof(Vec<TT, kVec>)) && aligned(out.data, sizeof(Vec<TO, kVec>));
    embedding_forward_kernel<TT, TO><<<grid_for(p.tokens), block_for(vec ? p.dim / kVec : p.dim), 0, stream>>>(
        out.ptr<TO>(), ids.ptr<const int32_t>(), table.ptr<const TT>(), p, s, vec);
  }));
  CUDA_CHECK_LAST();
}

void embedding_backward(TensorView dtable, TensorView dout, TensorView ids, const EmbeddingParams& p,
                        cudaStream_t stream) {
  embedding_check(dout, ids, dtable, p);
  ENGINE_CHECK(dtable.dtype == DType::kF32, "embedding (cuda): dtable ", dtable.str(), " must be f32");
  if (p.tokens == 0) return;
  const float s = rounded_scale(dout.dtype, p.scale);
  OPS_DISPATCH_FLOAT(dout.dtype, TG,
    embedding_backward_kernel<TG><<<grid_for(p.tokens), block_for(p.dim), 0, stream>>>(
        dtable.ptr<float>(), dout.ptr<const TG>(), ids.ptr<const int32_t>(), p, s));
  CUDA_CHECK_LAST();
}

}  // namespace cuda
}  // namespace ops
