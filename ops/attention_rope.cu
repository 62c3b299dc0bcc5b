// ops/attention_rope.cu: RoPE + head-major layout for q, k and v in one launch (and back). A block takes `tb`
// consecutive tokens: their cos/sin tables once (ops/rope_math.cuh, shared by the q and k heads), then each
// thread moves one V-element vector of one head's first half and the matching vector of its second half, from
// token-major to head-major (forward) or back (backward), rotating q's and k's and copying v's.
#include <algorithm>
#include <cstdint>

#include "ops/attention_rope.h"
#include "ops/rope_math.cuh"

namespace ops {
namespace {

constexpr int kBlock = 256;

template <typename T>
struct Members {
  T* tm[3];             // token-major: q, k, v (forward: read) or dq, dk, dv (backward: written)
  T* hm[3];             // head-major: qh, kh, vh (forward: written) or dqh, dkh, dvh (backward: read)
  bool add[3];          // backward: accumulate into tm[g]
  int64_t heads[3];     // H, KV, KV
};

template <typename T, int V, bool kBackward>
__global__ void __launch_bounds__(kBlock) attention_rope_kernel(Members<T> m, const int32_t* __restrict__ pos,
                                                                ropemath::InvFreq inv, AttentionRopeParams p,
                                                                int tb) {
  extern __shared__ float table[];  // cos (tb, d/2) then sin (tb, d/2)
  const int half = int(p.head_dim / 2), vecs = half / V;
  const int items = int(p.heads + 2 * p.kv_heads) * vecs;  // per token: q's heads, k's, v's
  const int64_t tokens = p.batch * p.seq, tok0 = int64_t(blockIdx.x) * tb;
  const int ntok = int(std::min<int64_t>(tb, tokens - tok0));
  float* cos_t = table;
  float* sin_t = table + tb * half;
  ropemath::tables<T>(cos_t, sin_t, pos, tok0, ntok, half, inv);
  using VecT = Vec<T, V>;
  for (int i = threadIdx.x; i < ntok * items; i += blockDim.x) {
    const int t = i / items, head = (i % items) / vecs, k0 = (i % vecs) * V;
    const int g = head < p.heads ? 0 : head < p.heads + p.kv_heads ? 1 : 2;
    const int64_t h = head - (g == 0 ? 0 : g == 1 ? p.heads : p.heads + p.kv_heads);
    T* tm = m.tm[g];
    if (kBackward && tm == nullptr) continue;  // a gradient nobody wants
    const int64_t n = tok0 + t, b = n / p.seq, tt = n % p.seq;
    const int64_t tm_base = (n * m.heads[g] + h) * p.head_dim + k0;                // first half; second at + half
    const int64_t hm_base = ((b * m.heads[g] + h) * p.seq + tt) * p.head_dim + k0;
    const T* src = kBackward ? m.hm[g] + hm_base : tm + tm_base;
    T* dst = kBackward ? tm + tm_base : m.hm[g] + hm_base;
    const VecT a = *reinterpret_cast<const VecT*>(src);
    const VecT bv = *reinterpret_cast<const VecT*>(src + half);
    VecT ra, rb;
    if (g == 2) {  // v: a copy (and the backward's accumulate)
      ra = a;
      rb = bv;
      if (kBackward && m.add[g]) {
        const VecT oa = *reinterpret_cast<const VecT*>(dst), ob = *reinterpret_cast<const VecT*>(dst + half);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          ra.v[j] = from_f32<T>(to_f32(oa.v[j]) + to_f32(a.v[j]));
          rb.v[j] = from_f32<T>(to_f32(ob.v[j]) + to_f32(bv.v[j]));
        }
      }
    } else {
      VecT oa, ob;
      if (kBackward && m.add[g]) {
        oa = *reinterpret_cast<const VecT*>(dst);
        ob = *reinterpret_cast<const VecT*>(dst + half);
      }
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float c = cos_t[t * half + k0 + j], s = sin_t[t * half + k0 + j];
        float r1, r2;
        if (kBackward) {
          ropemath::rotate_back(to_f32(a.v[j]), to_f32(bv.v[j]), c, s, r1, r2);
          if (m.add[g]) {
            r1 += to_f32(oa.v[j]);
            r2 += to_f32(ob.v[j]);
          }
        } else {
          ropemath::rotate<T>(to_f32(a.v[j]), to_f32(bv.v[j]), c, s, r1, r2);
        }
        ra.v[j] = from_f32<T>(r1);
        rb.v[j] = from_f32<T>(r2);
      }
    }
    *reinterpret_cast<VecT*>(dst) = ra;
    *reinterpret_cast<VecT*>(dst + half) = rb;
  }
}

template <typename T, bool kBackward>
void launch(const Members<T>& m, TensorView pos, const AttentionRopeParams& p, cudaStream_t stream) {
  const ropemath::InvFreq inv = ropemath::inv_freq(p.rope(p.heads));
  constexpr int kVec = 16 / sizeof(T);
  bool vec = (p.head_dim / 2) % kVec == 0;
  for (int g = 0; g < 3; ++g)
    vec = vec && reinterpret_cast<uintptr_t>(m.tm[g]) % 16 == 0 && reinterpret_cast<uintptr_t>(m.hm[g]) % 16 == 0;
  const int v = vec ? kVec : 1;
  const int64_t tokens = p.batch * p.seq, items = (p.heads + 2 * p.kv_heads) * (p.head_dim / 2 / v);
  const int tb = ropemath::tokens_per_block(items, tokens, kBlock);
  const unsigned grid = unsigned((tokens + tb - 1) / tb);
  const size_t smem = 2 * size_t(tb) * size_t(p.head_dim / 2) * sizeof(float);  // <= 16 KiB, as ops/rope.cu
  if (vec)
    attention_rope_kernel<T, kVec, kBackward><<<grid, kBlock, smem, stream>>>(m, pos.ptr<const int32_t>(), inv, p, tb);
  else
    attention_rope_kernel<T, 1, kBackward><<<grid, kBlock, smem, stream>>>(m, pos.ptr<const int32_t>(), inv, p, tb);
  CUDA_CHECK_LAST();
}

}  // namespace

namespace cuda {

void attention_rope_forward(TensorView qh, TensorView kh, TensorView vh, TensorView q, TensorView k, TensorView v,
                            TensorView pos, const AttentionRopeParams& p, cudaStream_t stream) {
  attention_rope_check(q, k, v, qh, kh, vh, pos, p);
  check_dtype(q, {DType::kF32, DType::kF16, DType::kBF16}, "attention_rope (cuda) q");
  OPS_DISPATCH_FLOAT(q.dtype, T, {
    Members<T> m{{q.ptr<T>(), k.ptr<T>(), v.ptr<T>()}, {qh.ptr<T>(), kh.ptr<T>(), vh.ptr<T>()}, {false, false, false},
                 {p.heads, p.kv_heads, p.kv_heads}};
    launch<T, false>(m, pos, p, stream);
  });
}

void attention_rope_backward(const AttentionRopeGrads& d, TensorView dqh, TensorView dkh, TensorView dvh,
                             TensorView pos, const AttentionRopeParams& p, cudaStream_t stream) {
  auto token_major = [&](TensorView t, TensorView hm, int64_t heads) {
    return t.defined() ? t : hm.reshape({p.batch * p.seq, heads * p.head_dim});  // shape stand-in for the check
  };
  attention_rope_check(token_major(d.dq, dqh, p.heads), token_major(d.dk, dkh, p.kv_heads),
                       token_major(d.dv, dvh, p.kv_heads), dqh, dkh, dvh, pos, p);
  check_dtype(dqh, {DType::kF32, DType::kF16, DType::kBF16}, "attention_rope (cuda) dqh");
  if (!d.dq.defined() && !d.dk.defined() && !d.dv.defined()) return;
  OPS_DISPATCH_FLOAT(dqh.dtype, T, {
    Members<T> m{{d.dq.ptr<T>(), d.dk.ptr<T>(), d.dv.ptr<T>()}, {dqh.ptr<T>(), dkh.ptr<T>(), dvh.ptr<T>()},
                 {d.dq_mode == Accum::kAdd, d.dk_mode == Accum::kAdd, d.dv_mode == Accum::kAdd},
                 {p.heads, p.kv_heads, p.kv_heads}};
    launch<T, true>(m, pos, p, stream);
  });
}

}  // namespace cuda
}  // namespace ops
