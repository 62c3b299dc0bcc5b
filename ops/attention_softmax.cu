// ops/attention_softmax.cu: the fused attention row kernels. One block per (b, h, i) row; f32 math with the
// act-dtype roundings of SPEC.md §1.4 reproduced by round-tripping through T. Only the allowed key range
// [lo, i] (widened to whole vectors) is read; the rest of the row is written as zeros, so causal rows read
// half of S on average. The forward stages the row's logits in shared memory (T floats).
#include <cstdint>

#include "ops/attention_softmax.h"
#include "ops/cuda_common.cuh"

namespace ops {
namespace {

template <typename T>
__device__ __forceinline__ float round_act(float v) {
  return to_f32(from_f32<T>(v));
}

// t = round(tanh(round(round(s * scale) / cap))): the softcap's tanh value as the forward rounds it.
template <typename T>
__device__ __forceinline__ float softcap_tanh(float s, const AttentionSoftmaxParams& p) {
  return round_act<T>(tanhf(round_act<T>(round_act<T>(s * p.scale) / p.softcap)));
}

template <typename T>
__device__ __forceinline__ float capped_logit(float s, const AttentionSoftmaxParams& p) {
  if (p.softcap <= 0.f) return round_act<T>(s * p.scale);
  return round_act<T>(softcap_tanh<T>(s, p) * p.softcap);
}

struct Row {
  int64_t b, i, lo, vlo, vhi;  // batch, query, first allowed key, [vlo, vhi) = [lo, i] widened to vectors
};

template <int VEC>
__device__ __forceinline__ Row row_of(const AttentionSoftmaxParams& p) {
  Row r;
  const int64_t row = blockIdx.x;
  r.i = row % p.seq;
  r.b = row / (p.heads * p.seq);
  r.lo = p.window > 0 ? max(int64_t(0), r.i - p.window + 1) : 0;
  r.vlo = r.lo / VEC * VEC;
  r.vhi = (r.i / VEC + 1) * VEC;  // <= T because T % VEC == 0
  return r;
}

__device__ __forceinline__ bool allowed(const Row& r, int64_t j, const int32_t* km) {
  return j >= r.lo && j <= r.i && (km == nullptr || km[j] != 0);
}

// No __restrict__ on probs/scores: they may alias (in-place forward).
template <typename T, int VEC>
__global__ void attention_softmax_forward_kernel(T* probs, const T* scores, const int32_t* __restrict__ key_mask,
                                                 AttentionSoftmaxParams p) {
  extern __shared__ float logits[];  // (T) capped logits, then exp values; -inf where masked
  __shared__ float red[32];
  const Row r = row_of<VEC>(p);
  const int64_t base = int64_t(blockIdx.x) * p.seq;
  const T* s = scores + base;  // (T)
  T* out = probs + base;       // (T)
  const int32_t* km = key_mask ? key_mask + r.b * p.seq : nullptr;

  float mx = -INFINITY;
  for (int64_t c = r.vlo + int64_t(threadIdx.x) * VEC; c < r.vhi; c += int64_t(blockDim.x) * VEC) {
    const Vec<T, VEC> v = *reinterpret_cast<const Vec<T, VEC>*>(s + c);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float x = allowed(r, c + k, km) ? capped_logit<T>(to_f32(v.v[k]), p) : -INFINITY;
      logits[c + k] = x;
      mx = fmaxf(mx, x);
    }
  }
  mx = block_max(mx, red);  // its barriers also order every read of s before the in-place writes below
  float sum = 0.f;
  for (int64_t c = r.vlo + int64_t(threadIdx.x) * VEC; c < r.vhi; c += int64_t(blockDim.x) * VEC)
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float x = logits[c + k];
      const float e = x == -INFINITY ? 0.f : expf(x - mx);
      logits[c + k] = e;
      sum += e;
    }
  sum = block_sum(sum, red);  // also publishes every thread's logits[] writes
  for (int64_t c = int64_t(threadIdx.x) * VEC; c < p.seq; c += int64_t(blockDim.x) * VEC) {
    Vec<T, VEC> o;
    const bool in_range = c >= r.vlo && c < r.vhi && sum > 0.f;  // sum = 0: no allowed key, all-zero row
#pragma unroll
    for (int k = 0; k < VEC; ++k) o.v[k] = from_f32<T>(in_range ? logits[c + k] / sum : 0.f);
    *reinterpret_cast<Vec<T, VEC>*>(out + c) = o;
  }
}

// No __restrict__ on dscores/dprobs: they may alias (in-place backward). Each element of dprobs is read for
// the row dot product before the block barrier, then read and overwritten by the same thread.
template <typename T, int VEC>
__global__ void attention_softmax_backward_kernel(T* dscores, const T* __restrict__ probs, const T* dprobs,
                                                  const T* __restrict__ scores,
                                                  const int32_t* __restrict__ key_mask, AttentionSoftmaxParams p) {
  __shared__ float red[32];
  const Row r = row_of<VEC>(p);
  const int64_t base = int64_t(blockIdx.x) * p.seq;
  const int32_t* km = key_mask ? key_mask + r.b * p.seq : nullptr;

  float dot = 0.f;
  for (int64_t c = r.vlo + int64_t(threadIdx.x) * VEC; c < r.vhi; c += int64_t(blockDim.x) * VEC) {
    const Vec<T, VEC> pv = *reinterpret_cast<const Vec<T, VEC>*>(probs + base + c);
    const Vec<T, VEC> dv = *reinterpret_cast<const Vec<T, VEC>*>(dprobs + base + c);
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      if (allowed(r, c + k, km)) dot += to_f32(pv.v[k]) * to_f32(dv.v[k]);
  }
  dot = block_sum(dot, red);
  for (int64_t c = int64_t(threadIdx.x) * VEC; c < p.seq; c += int64_t(blockDim.x) * VEC) {
    Vec<T, VEC> o;
    if (c >= r.vlo && c < r.vhi) {
      const Vec<T, VEC> pv = *reinterpret_cast<const Vec<T, VEC>*>(probs + base + c);
      const Vec<T, VEC> dv = *reinterpret_cast<const Vec<T, VEC>*>(dprobs + base + c);
      const Vec<T, VEC> sv = *reinterpret_cast<const Vec<T, VEC>*>(scores + base + c);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        float ds = 0.f;
        if (allowed(r, c + k, km)) {
          ds = to_f32(pv.v[k]) * (to_f32(dv.v[k]) - dot);
          if (p.softcap > 0.f) {
            const float t = softcap_tanh<T>(to_f32(sv.v[k]), p);
            ds *= 1.f - t * t;
          }
          ds *= p.scale;
        }
        o.v[k] = from_f32<T>(ds);
      }
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) o.v[k] = from_f32<T>(0.f);
    }
    *reinterpret_cast<Vec<T, VEC>*>(dscores + base + c) = o;
  }
}

// 16-byte vectors when every row starts 16-byte aligned; otherwise element by element.
template <typename T>
int vec_for(int64_t seq, std::initializer_list<const void*> ptrs) {
  constexpr int kVec = 16 / sizeof(T);
  if (seq % kVec != 0) return 1;
  for (const void* q : ptrs)
    if (reinterpret_cast<uintptr_t>(q) % 16 != 0) return 1;
  return kVec;
}

// Enough threads for one vector each over a full row, between one warp and 256.
int block_for(int64_t seq, int vec) {
  int b = 32;
  while (b < 256 && int64_t(b) * vec < seq) b *= 2;
  return b;
}

void check_cuda_params(TensorView scores, const AttentionSoftmaxParams& p) {
  check_dtype(scores, {DType::kF32, DType::kF16, DType::kBF16}, "attention softmax (cuda) scores");
  ENGINE_CHECK(p.seq <= attention_softmax_max_seq(), "attention softmax (cuda): T=", p.seq, " exceeds ",
               attention_softmax_max_seq());
}

}  // namespace

namespace cuda {

void attention_softmax_forward(TensorView probs, TensorView scores, TensorView key_mask,
                               const AttentionSoftmaxParams& p, cudaStream_t stream) {
  attention_softmax_check(probs, scores, key_mask, p);
  check_cuda_params(scores, p);
  const int64_t rows = p.batch * p.heads * p.seq;
  if (rows == 0) return;
  const size_t smem = size_t(p.seq) * sizeof(float);
  OPS_DISPATCH_FLOAT(scores.dtype, T, {
    const int vec = vec_for<T>(p.seq, {probs.data, scores.data});
    constexpr int kVec = 16 / sizeof(T);
    if (vec == kVec)
      attention_softmax_forward_kernel<T, kVec><<<unsigned(rows), block_for(p.seq, vec), smem, stream>>>(
          probs.ptr<T>(), scores.ptr<const T>(), key_mask.ptr<const int32_t>(), p);
    else
      attention_softmax_forward_kernel<T, 1><<<unsigned(rows), block_for(p.seq, 1), smem, stream>>>(
          probs.ptr<T>(), scores.ptr<const T>(), key_mask.ptr<const int32_t>(), p);
  });
  CUDA_CHECK_LAST();
}

void attention_softmax_backward(TensorView dscores, TensorView probs, TensorView dprobs, TensorView scores,
                                TensorView key_mask, const AttentionSoftmaxParams& p, cudaStream_t stream) {
  attention_softmax_check(probs, scores, key_mask, p);
  ENGINE_CHECK(dscores.dtype == scores.dtype && dprobs.dtype == scores.dtype && dscores.numel() == scores.numel() &&
                   dprobs.numel() == scores.numel(),
               "attention softmax backward: dscores ", dscores.str(), " and dprobs ", dprobs.str(),
               " must match scores ", scores.str());
  check_cuda_params(scores, p);
  const int64_t rows = p.batch * p.heads * p.seq;
  if (rows == 0) return;
  OPS_DISPATCH_FLOAT(scores.dtype, T, {
    const int vec = vec_for<T>(p.seq, {dscores.data, probs.data, dprobs.data, scores.data});
    constexpr int kVec = 16 / sizeof(T);
    if (vec == kVec)
      attention_softmax_backward_kernel<T, kVec><<<unsigned(rows), block_for(p.seq, vec), 0, stream>>>(
          dscores.ptr<T>(), probs.ptr<const T>(), dprobs.ptr<const T>(), scores.ptr<const T>(),
          key_mask.ptr<const int32_t>(), p);
    else
      attention_softmax_backward_kernel<T, 1><<<unsigned(rows), block_for(p.seq, 1), 0, stream>>>(
          dscores.ptr<T>(), probs.ptr<const T>(), dprobs.ptr<const T>(), scores.ptr<const T>(),
          key_mask.ptr<const int32_t>(), p);
  });
  CUDA_CHECK_LAST();
}

}  // namespace cuda
}  // namespace ops
