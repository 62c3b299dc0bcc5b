// ops/lm_head_ce.cu: the row kernel of the fused LM head + CE (SPEC.md §1.6, §1.7): softcap in the act
// dtype with HF's three roundings, f32 log-softmax, dlogits written over the logits. One block per row;
// pass 1 streams the row once for max and sum(exp) (online rescaling per 16-byte pack), pass 2 streams it
// again to write dlogits. A V = 256000 row (512 KB in bf16) does not fit in shared memory, so the row is
// read twice: the kernel moves 3 x the logits bytes, small next to the two GEMMs around it.
#include "ops/cuda_common.cuh"
#include "ops/lm_head_ce.h"

namespace ops {
namespace {

constexpr int kMaxBlock = 512;

template <typename T, int kVec>
struct __align__(sizeof(T) * kVec) Pack {
  T v[kVec];
};

// HF's softcap in T: logits * f32(1/cap) (torch's CUDA division by a scalar), tanh, * cap, each rounded to T.
// Returns the capped logit in f32 and, through slope, d capped / d raw = cap * inv_cap * (1 - t^2).
template <typename T>
__device__ __forceinline__ float capped(T raw, float cap, float inv_cap, float* slope) {
  if (cap <= 0.f) {
    *slope = 1.f;
    return to_f32(raw);
  }
  const float a = to_f32(from_f32<T>(to_f32(raw) * inv_cap));
  const float t = to_f32(from_f32<T>(tanhf(a)));
  *slope = cap * inv_cap * (1.f - t * t);
  return to_f32(from_f32<T>(t * cap));
}

// Rows with label -100 get loss 0 and zero dlogits. kVec elements per 16-byte load (1 when V or the
// buffer is not aligned for it); V % kVec == 0.
template <typename T, int kVec>
__global__ void __launch_bounds__(kMaxBlock)
    lm_head_ce_rows_kernel(float* __restrict__ row_loss, T* __restrict__ logits, const int32_t* __restrict__ labels,
                           bool write_grad, LmHeadCeParams p) {
  using P = Pack<T, kVec>;
  __shared__ float smem[32];
  const int64_t row = blockIdx.x;
  P* xr = reinterpret_cast<P*>(logits + row * p.vocab);  // (V / kVec)
  const int64_t npack = p.vocab / kVec;
  const int32_t y = labels[row];
  const float cap = p.softcap, inv_cap = cap > 0.f ? 1.f / cap : 0.f;
  float slope;
  if (y == kIgnoreIndex) {
    if (threadIdx.x == 0) row_loss[row] = 0.f;
    if (write_grad) {
      P z;
#pragma unroll
      for (int k = 0; k < kVec; ++k) z.v[k] = from_f32<T>(0.f);
      for (int64_t i = threadIdx.x; i < npack; i += blockDim.x) xr[i] = z;
    }
    return;
  }
  const bool bad_label = y < 0 || y >= p.vocab;
  float x_label = 0.f;
  if (threadIdx.x == 0 && !bad_label) x_label = capped(logits[row * p.vocab + y], cap, inv_cap, &slope);

  // Pass 1: per-thread running max m and sum s of exp(x - m), rescaled once per pack.
  float m = -INFINITY, s = 0.f;
  for (int64_t i = threadIdx.x; i < npack; i += blockDim.x) {
    const P v = xr[i];
    float x[kVec], pm = -INFINITY;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      x[k] = capped(v.v[k], cap, inv_cap, &slope);
      pm = fmaxf(pm, x[k]);
    }
    if (pm > m) {
      s *= __expf(m - pm);
      m = pm;
    }
#pragma unroll
    for (int k = 0; k < kVec; ++k) s += __expf(x[k] - m);
  }
  const float row_max = block_max(m, smem);
  const float sum = block_sum(m == -INFINITY ? 0.f : s * __expf(m - row_max), smem);
  const float lse = row_max + logf(sum);
  if (threadIdx.x == 0) row_loss[row] = bad_label ? NAN : lse - x_label;
  if (!write_grad) return;

  // Pass 2: dlogit = (softmax - onehot) * grad_scale * slope, rounded once to T.
  for (int64_t i = threadIdx.x; i < npack; i += blockDim.x) {
    P v = xr[i];
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const float x = capped(v.v[k], cap, inv_cap, &slope);
      const float onehot = i * kVec + k == y ? 1.f : 0.f;
      v.v[k] = from_f32<T>((__expf(x - lse) - onehot) * p.grad_scale * slope);
    }
    xr[i] = v;
  }
}

// Adds the chunk's row losses and valid count in a fixed order (one block, tree sum): loss_sum does not
// depend on scheduling, unlike per-row atomics.
__global__ void lm_head_ce_finalize_kernel(float* __restrict__ loss_sum, int32_t* __restrict__ n_valid,
                                           const float* __restrict__ row_loss, const int32_t* __restrict__ labels,
                                           int64_t rows) {
  __shared__ float smem[32];
  float s = 0.f, c = 0.f;  // c: exact in f32 up to 2^24 rows
  for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) {
    s += row_loss[i];
    c += labels[i] != kIgnoreIndex ? 1.f : 0.f;
  }
  s = block_sum(s, smem);
  c = block_sum(c, smem);
  if (threadIdx.x == 0) {
    loss_sum[0] += s;
    if (n_valid != nullptr) n_valid[0] += int32_t(c);
  }
}

int block_for(int64_t packs) {
  // Enough threads to cover short rows without idle warps; kMaxBlock for long rows.
  int b = 32;
  while (b < kMaxBlock && b < packs) b *= 2;
  return b;
}

template <typename T>
void launch_rows(float* row_loss, TensorView logits, const int32_t* labels, bool write_grad, const LmHeadCeParams& p,
                 int64_t rows, cudaStream_t stream) {
  // 16-byte packs need every row start 16-byte aligned: V * sizeof(T) % 16 == 0 and an aligned buffer.
  constexpr int kVec = 16 / sizeof(T);
  const bool vec = p.vocab % kVec == 0 && reinterpret_cast<uintptr_t>(logits.data) % 16 == 0;
  if (vec)
    lm_head_ce_rows_kernel<T, kVec><<<unsigned(rows), block_for(p.vocab / kVec), 0, stream>>>(
        row_loss, logits.ptr<T>(), labels, write_grad, p);
  else
    lm_head_ce_rows_kernel<T, 1><<<unsigned(rows), block_for(p.vocab), 0, stream>>>(
        row_loss, logits.ptr<T>(), labels, write_grad, p);
  CUDA_CHECK_LAST();
}

}  // namespace

namespace cuda {

void lm_head_ce_rows(TensorView loss_sum, TensorView n_valid, TensorView row_loss, TensorView logits,
                     TensorView labels, bool write_grad, const LmHeadCeParams& p, cudaStream_t stream) {
  const int64_t rows = logits.rows();
  check_dtype(logits, {DType::kF32, DType::kF16, DType::kBF16}, "lm_head_ce_rows logits");
  ENGINE_CHECK(logits.cols() == p.vocab && labels.dtype == DType::kI32 && labels.numel() == rows &&
                   row_loss.dtype == DType::kF32 && row_loss.numel() == rows,
               "lm_head_ce_rows: logits ", logits.str(), " (vocab=", p.vocab, "), labels ", labels.str(),
               " (i32) and row_loss ", row_loss.str(), " (f32) disagree");
  ENGINE_CHECK(loss_sum.dtype == DType::kF32 && loss_sum.numel() == 1 &&
                   (!n_valid.defined() || (n_valid.dtype == DType::kI32 && n_valid.numel() == 1)),
               "lm_head_ce_rows: loss_sum ", loss_sum.str(), " must be one f32, n_valid ", n_valid.str(), " one i32");
  ENGINE_CHECK(on_cuda({loss_sum, n_valid, row_loss, logits, labels}), "lm_head_ce_rows: tensors must be on CUDA");
  if (rows == 0) return;
  OPS_DISPATCH_FLOAT(logits.dtype, T,
    launch_rows<T>(row_loss.ptr<float>(), logits, labels.ptr<const int32_t>(), write_grad, p, rows, stream));
  lm_head_ce_finalize_kernel<<<1, 1024, 0, stream>>>(loss_sum.ptr<float>(), n_valid.ptr<int32_t>(),
                                                     row_loss.ptr<const float>(), labels.ptr<const int32_t>(), rows);
  CUDA_CHECK_LAST();
}

}  // namespace cuda
}  // namespace ops
