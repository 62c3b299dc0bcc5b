// ops/attention_decode.cu: decode attention kernel. One block per (query r, head h); f32 math with the act-dtype
// roundings of SPEC.md §1.4 (the same device helpers as ops/attention_softmax.cu). Three phases:
//   1. scores: each warp takes keys j = lo + warp, lo + warp + nwarps, ...; its lanes split the head dim
//      (coalesced reads of one key row) and warp-reduce the dot product; the capped logit goes to shared memory.
//   2. softmax over the staged logits (block max, block sum); p_j rounded to act, kept in shared memory.
//   3. P V: the block is split into G key groups of nd = min(hd, blockDim) threads; thread (g, d) sums
//      p_j v_j[d] over keys j = lo + g, lo + g + G, ... (coalesced over d); the G partial sums are added in
//      shared memory and rounded once.
// Shared memory: q (hd) + logits (keys of the longest row) + partials (max(blockDim, hd)) floats.
#include <algorithm>

#include "ops/attention_decode.h"
#include "ops/cuda_common.cuh"

namespace ops {
namespace {

constexpr int kBlock = 256;

template <typename T>
__device__ __forceinline__ float round_act(float v) {
  return to_f32(from_f32<T>(v));
}

template <typename T>
__device__ __forceinline__ float capped_logit(float s, const AttentionDecodeParams& p) {
  const float x = round_act<T>(round_act<T>(s) * p.scale);
  if (p.softcap <= 0.f) return x;
  return round_act<T>(round_act<T>(tanhf(round_act<T>(x / p.softcap))) * p.softcap);
}

template <typename T>
__global__ void attention_decode_kernel(T* __restrict__ out, const T* __restrict__ q, const T* __restrict__ k,
                                        const T* __restrict__ v, AttentionDecodeParams p, int64_t max_keys) {
  extern __shared__ float smem[];
  __shared__ float red[32];
  const int64_t hd = p.head_dim, H = p.heads, qcols = H * hd, kvcols = p.kv_heads * hd;
  const int64_t t = blockIdx.x / H, h = blockIdx.x % H;
  const int64_t i = p.past + t, lo = p.window > 0 ? max(int64_t(0), i - p.window + 1) : 0, nk = i - lo + 1;
  const int64_t kvo = (h / (H / p.kv_heads)) * hd;
  float* qs = smem;                    // (hd)
  float* logits = smem + hd;           // (nk) logits, then probabilities
  float* part = logits + max_keys;     // (max(blockDim, hd)) P V partial sums

  const T* qr = q + t * qcols + h * hd;
  for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = to_f32(qr[d]);
  __syncthreads();

  // 1. scores
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  float mx = -INFINITY;
  for (int64_t jj = warp; jj < nk; jj += nwarps) {
    const T* kr = k + (lo + jj) * kvcols + kvo;
    float s = 0.f;
    for (int64_t d = lane; d < hd; d += 32) s += qs[d] * to_f32(kr[d]);
    s = warp_sum(s);
    const float x = capped_logit<T>(s, p);
    if (lane == 0) logits[jj] = x;
    mx = fmaxf(mx, x);
  }
  mx = block_max(mx, red);  // its barriers also publish the logits

  // 2. softmax
  float sum = 0.f;
  for (int64_t jj = threadIdx.x; jj < nk; jj += blockDim.x) {
    const float e = expf(logits[jj] - mx);
    logits[jj] = e;
    sum += e;
  }
  sum = block_sum(sum, red);
  for (int64_t jj = threadIdx.x; jj < nk; jj += blockDim.x) logits[jj] = round_act<T>(logits[jj] / sum);
  __syncthreads();

  // 3. out = P V
  const int64_t nd = min(hd, int64_t(blockDim.x)), G = int64_t(blockDim.x) / nd;
  const int64_t g = threadIdx.x / nd, dl = threadIdx.x % nd;
  if (g < G)
    for (int64_t d = dl; d < hd; d += nd) {
      float acc = 0.f;
      for (int64_t jj = g; jj < nk; jj += G) acc += logits[jj] * to_f32(v[(lo + jj) * kvcols + kvo + d]);
      part[g * hd + d] = acc;
    }
  __syncthreads();
  T* orow = out + t * qcols + h * hd;
  for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc = 0.f;
    for (int64_t gg = 0; gg < G; ++gg) acc += part[gg * hd + d];
    orow[d] = from_f32<T>(acc);
  }
}

}  // namespace

namespace cuda {

void attention_decode_forward(TensorView out, TensorView q, TensorView k, TensorView v, const AttentionDecodeParams& p,
                              cudaStream_t stream) {
  attention_decode_check(out, q, k, v, p);
  check_dtype(q, {DType::kF32, DType::kF16, DType::kBF16}, "attention decode (cuda) q");
  const int64_t total = p.past + p.queries;
  const int64_t max_keys = p.window > 0 ? std::min(p.window, total) : total;
  ENGINE_CHECK(max_keys <= attention_decode_max_keys(), "attention decode (cuda): ", max_keys,
               " keys per query exceed ", attention_decode_max_keys());
  const size_t smem = size_t(p.head_dim + max_keys + std::max<int64_t>(kBlock, p.head_dim)) * sizeof(float);
  ENGINE_CHECK(smem <= 48 * 1024, "attention decode (cuda): hd=", p.head_dim, " with ", max_keys,
               " keys needs ", smem, " bytes of shared memory (48 KiB at most)");
  const int64_t blocks = p.queries * p.heads;
  OPS_DISPATCH_FLOAT(q.dtype, T,
    attention_decode_kernel<T><<<unsigned(blocks), kBlock, smem, stream>>>(
        out.ptr<T>(), q.ptr<const T>(), k.ptr<const T>(), v.ptr<const T>(), p, max_keys));
  CUDA_CHECK_LAST();
}

}  // namespace cuda
}  // namespace ops
