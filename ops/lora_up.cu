// ops/lora_up.cu: LoRA up-projection kernels (SPEC.md §4.1), f32 math on CUDA cores; the rank R is a
// template parameter (1, 2, 4, 8, 16), so b's 8 x R block of a vector's columns is R aligned vectors whose
// elements are indexed at compile time.
//   Forward: a thread per 8-column vector of y: y += s * t[m, :] . b[c, :], one read and one write of y.
//   Backward: a block owns 256 columns of dy (a lane per vector, b's 8 x R block in registers) and a slab of
//   rows shared row by row by its 8 warps. Per row: dt's partial dot products over the block's columns are
//   shuffle-summed into the workspace; dB's partial sums stay in registers, are summed over the warps in
//   warp order and written per slab. A second kernel sums dt's chunks in chunk order (and rounds) and adds
//   dB's slabs in slab order. No atomics: bitwise reproducible.
#include <algorithm>
#include <cstdint>

#include "ops/cuda_common.cuh"
#include "ops/lora_up.h"

namespace ops {
namespace {

constexpr int kThreads = 256, kWarps = kThreads / 32, kV = 8;

// b[c0 + k, j] for the 8 rows c0 .. c0 + 7 of b (out, R): 8 * R consecutive elements = R vectors.
template <typename T, int R>
struct BBlock {
  Vec<T, kV> v[R];
  __device__ __forceinline__ float at(int k, int j) const { return to_f32(v[(k * R + j) / kV].v[(k * R + j) % kV]); }
};

template <typename T, int R>
__device__ __forceinline__ BBlock<T, R> load_b(const T* b, int64_t vec) {
  BBlock<T, R> bb;
  const Vec<T, kV>* src = reinterpret_cast<const Vec<T, kV>*>(b + vec * kV * R);
#pragma unroll
  for (int q = 0; q < R; ++q) bb.v[q] = src[q];
  return bb;
}

template <typename T, int R>
__global__ void lora_up_fwd_kernel(T* __restrict__ y, const T* __restrict__ t, const T* __restrict__ b,
                                   LoraUpParams p) {
  const int64_t nv = p.out / kV, total = p.n * nv;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = i / nv, v = i % nv;
    float tr[R];
#pragma unroll
    for (int j = 0; j < R; ++j) tr[j] = to_f32(t[m * R + j]);
    const BBlock<T, R> bb = load_b<T, R>(b, v);
    Vec<T, kV>* yp = reinterpret_cast<Vec<T, kV>*>(y + m * p.out) + v;
    Vec<T, kV> yv = *yp;
#pragma unroll
    for (int k = 0; k < kV; ++k) {
      float acc = 0.f;
#pragma unroll
      for (int j = 0; j < R; ++j) acc = fmaf(tr[j], bb.at(k, j), acc);
      yv.v[k] = from_f32<T>(fmaf(p.scaling, acc, to_f32(yv.v[k])));
    }
    *yp = yv;
  }
}

// Block (x, y): columns [256 x, 256 x + 256), rows [y * slab_rows, ...).
//   ws_dt[x][m][j] = sum over the block's columns of dy[m, c] b[c, j]
//   ws_db[y][c][j] = sum over the slab's rows of dy[m, c] t[m, j]
template <typename T, int R>
__global__ void __launch_bounds__(kThreads) lora_up_bwd_kernel(float* __restrict__ ws_dt, float* __restrict__ ws_db,
                                                                const T* __restrict__ dy, const T* __restrict__ t,
                                                                const T* __restrict__ b, LoraUpParams p,
                                                                int64_t slab_rows) {
  __shared__ float red[R * kV * 32];  // [j][k][lane]: conflict-free writes; column = 8 lane + k
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t nv = p.out / kV, v = int64_t(blockIdx.x) * 32 + lane;
  const bool active = v < nv;
  BBlock<T, R> bb;
  if (active) bb = load_b<T, R>(b, v);
  else
#pragma unroll
    for (int q = 0; q < R; ++q)
#pragma unroll
      for (int k = 0; k < kV; ++k) bb.v[q].v[k] = from_f32<T>(0.f);
  float acc[kV][R];
#pragma unroll
  for (int k = 0; k < kV; ++k)
#pragma unroll
    for (int j = 0; j < R; ++j) acc[k][j] = 0.f;
  const int64_t m_begin = int64_t(blockIdx.y) * slab_rows;
  const int64_t m_end = m_begin + slab_rows < p.n ? m_begin + slab_rows : p.n;
#pragma unroll 2
  for (int64_t m = m_begin + warp; m < m_end; m += kWarps) {
    float d[kV] = {};
    if (active) {
      const Vec<T, kV> dv = reinterpret_cast<const Vec<T, kV>*>(dy + m * p.out)[v];
#pragma unroll
      for (int k = 0; k < kV; ++k) d[k] = to_f32(dv.v[k]);
    }
    float tr[R];
#pragma unroll
    for (int j = 0; j < R; ++j) tr[j] = to_f32(t[m * R + j]);
    float part[R];
#pragma unroll
    for (int j = 0; j < R; ++j) {
      float s = 0.f;
#pragma unroll
      for (int k = 0; k < kV; ++k) {
        s = fmaf(d[k], bb.at(k, j), s);
        acc[k][j] = fmaf(d[k], tr[j], acc[k][j]);
      }
      part[j] = warp_sum(s);
    }
    float* o = ws_dt + (int64_t(blockIdx.x) * p.n + m) * R;
#pragma unroll
    for (int j = 0; j < R; ++j)
      if (lane == j) o[j] = part[j];
  }
  // dB partials: the 8 warps summed in warp order into red, then this slab's rows of ws_db.
  for (int w = 0; w < kWarps; ++w) {
    if (warp == w) {
#pragma unroll
      for (int k = 0; k < kV; ++k)
#pragma unroll
        for (int j = 0; j < R; ++j) {
          float& r = red[(j * kV + k) * 32 + lane];
          r = w == 0 ? acc[k][j] : r + acc[k][j];
        }
    }
    __syncthreads();
  }
  const int64_t col0 = int64_t(blockIdx.x) * 32 * kV;
  for (int e = threadIdx.x; e < 32 * kV * R; e += kThreads) {  // e = (column - col0) * R + j
    const int cl = e / R, j = e % R;
    if (col0 + cl < p.out) ws_db[(int64_t(blockIdx.y) * p.out + col0) * R + e] = red[(j * kV + cl % kV) * 32 + cl / kV];
  }
}

// dt = round(s * sum of ws_dt's chunks, in chunk order); dB += s * (sum of ws_db's slabs, in slab order).
template <typename T>
__global__ void lora_up_reduce_kernel(T* __restrict__ dt, float* __restrict__ db, const float* __restrict__ ws_dt,
                                      const float* __restrict__ ws_db, LoraUpParams p, int64_t chunks,
                                      int64_t slabs) {
  const int64_t n_dt = p.n * p.r, n_db = p.out * p.r;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n_dt + n_db;
       i += int64_t(gridDim.x) * blockDim.x) {
    if (i < n_dt) {
      float s = ws_dt[i];
      for (int64_t q = 1; q < chunks; ++q) s += ws_dt[q * n_dt + i];
      dt[i] = from_f32<T>(p.scaling * s);
    } else {
      const int64_t e = i - n_dt;
      float s = ws_db[e];
      for (int64_t q = 1; q < slabs; ++q) s += ws_db[q * n_db + e];
      db[e] = fmaf(p.scaling, s, db[e]);
    }
  }
}

void check_cuda(const TensorView& yy, const TensorView& b, const LoraUpParams& p, const char* what) {
  ENGINE_CHECK(b.dtype != DType::kF64, what, ": f64 is CPU-only (", b.str(), ")");
  ENGINE_CHECK(lora_up_fusable(p.out, p.r), what, ": CUDA needs out % 8 == 0 and r in {1, 2, 4, 8, 16}, got out=",
               p.out, " r=", p.r);
  ENGINE_CHECK(vec8_aligned({yy, b}), what, ": y/dy and b must be 8-element aligned");
}

// Calls f(std::integral_constant<int, R>{}) for the supported ranks.
template <typename F>
void dispatch_rank(int64_t r, F f) {
  using std::integral_constant;
  switch (r) {
    case 1: f(integral_constant<int, 1>{}); break;
    case 2: f(integral_constant<int, 2>{}); break;
    case 4: f(integral_constant<int, 4>{}); break;
    case 8: f(integral_constant<int, 8>{}); break;
    default: f(integral_constant<int, 16>{});
  }
}

}  // namespace

namespace cuda {

void lora_up_forward(TensorView y, TensorView t, TensorView b, const LoraUpParams& p, cudaStream_t stream) {
  lora_up_forward_check(y, t, b, p);
  check_cuda(y, b, p, "lora_up_forward");
  if (p.n == 0) return;
  const int64_t total = p.n * (p.out / kV);
  const unsigned grid = unsigned(std::min<int64_t>((total + kThreads - 1) / kThreads, 16 * int64_t(sm_count())));
  OPS_DISPATCH_FLOAT(y.dtype, T, dispatch_rank(p.r, [&](auto rr) {
    lora_up_fwd_kernel<T, decltype(rr)::value><<<grid, kThreads, 0, stream>>>(y.ptr<T>(), t.ptr<const T>(),
                                                                             b.ptr<const T>(), p);
  }));
  CUDA_CHECK_LAST();
}

void lora_up_backward(TensorView dt, TensorView db, TensorView dy, TensorView t, TensorView b, TensorView workspace,
                      const LoraUpParams& p, cudaStream_t stream) {
  lora_up_backward_check(dt, db, dy, t, b, p);
  check_cuda(dy, b, p, "lora_up_backward");
  ENGINE_CHECK(db.dtype == DType::kF32, "lora_up_backward: dB must be f32 on CUDA, got ", db.str());
  const int64_t need = lora_up_workspace_elems(p.n, p.out, p.r);
  ENGINE_CHECK(workspace.defined() && workspace.dtype == DType::kF32 && workspace.numel() >= need,
               "lora_up_backward: workspace must be f32 with >= ", need, " elements, got ", workspace.str());
  if (p.n == 0) return;
  const int64_t chunks = lora_up_chunks(p.out), slabs = lora_up_slabs(p.n), slab_rows = (p.n + slabs - 1) / slabs;
  float* ws_dt = workspace.ptr<float>();
  float* ws_db = ws_dt + chunks * p.n * p.r;
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(slabs));
  const int64_t elems = (p.n + p.out) * p.r;
  const unsigned rgrid = unsigned(std::min<int64_t>((elems + 255) / 256, 1024));
  OPS_DISPATCH_FLOAT(dy.dtype, T, dispatch_rank(p.r, [&](auto rr) {
    lora_up_bwd_kernel<T, decltype(rr)::value><<<grid, kThreads, 0, stream>>>(ws_dt, ws_db, dy.ptr<const T>(),
                                                                             t.ptr<const T>(), b.ptr<const T>(), p,
                                                                             slab_rows);
    CUDA_CHECK_LAST();
    lora_up_reduce_kernel<T><<<rgrid, 256, 0, stream>>>(dt.ptr<T>(), db.ptr<float>(), ws_dt, ws_db, p, chunks, slabs);
  }));
  CUDA_CHECK_LAST();
}

}  // namespace cuda
}  // namespace ops
