// ops/lora_up.cu: LoRA up-projection kernels (SPEC.md §4.1), f32 math on CUDA cores; the rank R is a
// template parameter (1, 2, 4, 8, 16), so b's 8 x R block of a vector's columns is R aligned vectors whose
// elements are indexed at compile time.
//   Forward: a thread per 8-column vector of y: y += s * t[m, :] . b[c, :], one read and one write of y.
//   Backward: a block owns 256 columns of dy (a lane per vector, b's 8 x R block in registers) and a slab of
//   rows shared row by row by its 8 warps. Per row: dt's partial dot products over the block's columns are
//   shuffle-summed into the workspace; dB's partial sums stay in registers, are summed over the warps in
//   warp order and written per slab. A second kernel sums dt's chunks in chunk order (and rounds) and adds
//   dB's slabs in slab order. No atomics: bitwise reproducible.
//   Groups (ops/lora_branch.h): one launch serves up to kLoraMaxGroup members, the forward over the members'
//   concatenated vectors, the backward's first pass over their concatenated column chunks (each block finds its
//   member from the chunk index); ops/lora_down.cu finishes a group's dt and dB.
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

// A forward member: y += s * t B^T over its n x out / 8 vectors, which start at flat index `begin`.
template <typename T>
struct UpFwdMember {
  T* y;
  const T* t;
  const T* b;
  int64_t out, begin;
  float s;
};
template <typename T>
struct UpFwdGroup {
  UpFwdMember<T> m[kLoraMaxGroup];
  int count;
  int64_t total;
};

template <typename T, int R>
__global__ void lora_up_fwd_kernel(UpFwdGroup<T> grp) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < grp.total;
       i += int64_t(gridDim.x) * blockDim.x) {
    int g = 0;
    while (g + 1 < grp.count && i >= grp.m[g + 1].begin) ++g;
    const UpFwdMember<T>& mb = grp.m[g];
    const int64_t nv = mb.out / kV, m = (i - mb.begin) / nv, v = (i - mb.begin) % nv;
    float tr[R];
#pragma unroll
    for (int j = 0; j < R; ++j) tr[j] = to_f32(mb.t[m * R + j]);
    const BBlock<T, R> bb = load_b<T, R>(mb.b, v);
    Vec<T, kV>* yp = reinterpret_cast<Vec<T, kV>*>(mb.y + m * mb.out) + v;
    Vec<T, kV> yv = *yp;
#pragma unroll
    for (int k = 0; k < kV; ++k) {
      float acc = 0.f;
#pragma unroll
      for (int j = 0; j < R; ++j) acc = fmaf(tr[j], bb.at(k, j), acc);
      yv.v[k] = from_f32<T>(fmaf(mb.s, acc, to_f32(yv.v[k])));
    }
    *yp = yv;
  }
}

// One member of a backward group: its dy, t, b, workspace slices and its first column chunk in the grid.
template <typename T>
struct UpBwdMember {
  float* ws_dt;
  float* ws_db;
  const T* dy;
  const T* t;
  const T* b;
  int64_t out, chunk0;
};
template <typename T>
struct UpBwdGroup {
  UpBwdMember<T> m[kLoraMaxGroup];
  int count;
  int64_t n, slab_rows;
};

// Block (x, y): the member whose chunks hold x, its columns [256 cx, 256 cx + 256) (cx = x - chunk0), rows
// [y * slab_rows, ...).
//   ws_dt[cx][m][j] = sum over the block's columns of dy[m, c] b[c, j]
//   ws_db[y][c][j]  = sum over the slab's rows of dy[m, c] t[m, j]
template <typename T, int R>
__global__ void __launch_bounds__(kThreads) lora_up_bwd_kernel(UpBwdGroup<T> grp) {
  __shared__ float red[R * kV * 32];  // [j][k][lane]: conflict-free writes; column = 8 lane + k
  int g = 0;
  while (g + 1 < grp.count && int64_t(blockIdx.x) >= grp.m[g + 1].chunk0) ++g;
  const UpBwdMember<T> mb = grp.m[g];
  const int64_t cx = int64_t(blockIdx.x) - mb.chunk0, n = grp.n;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t nv = mb.out / kV, v = cx * 32 + lane;
  const bool active = v < nv;
  BBlock<T, R> bb;
  if (active) bb = load_b<T, R>(mb.b, v);
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
  const int64_t m_begin = int64_t(blockIdx.y) * grp.slab_rows;
  const int64_t m_end = m_begin + grp.slab_rows < n ? m_begin + grp.slab_rows : n;
#pragma unroll 2
  for (int64_t m = m_begin + warp; m < m_end; m += kWarps) {
    float d[kV] = {};
    if (active) {
      const Vec<T, kV> dv = reinterpret_cast<const Vec<T, kV>*>(mb.dy + m * mb.out)[v];
#pragma unroll
      for (int k = 0; k < kV; ++k) d[k] = to_f32(dv.v[k]);
    }
    float tr[R];
#pragma unroll
    for (int j = 0; j < R; ++j) tr[j] = to_f32(mb.t[m * R + j]);
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
    float* o = mb.ws_dt + (cx * n + m) * R;
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
  const int64_t col0 = cx * 32 * kV;
  for (int e = threadIdx.x; e < 32 * kV * R; e += kThreads) {  // e = (column - col0) * R + j
    const int cl = e / R, j = e % R;
    if (col0 + cl < mb.out)
      mb.ws_db[(int64_t(blockIdx.y) * mb.out + col0) * R + e] = red[(j * kV + cl % kV) * 32 + cl / kV];
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
  const LoraUpEpilogue m{y, b, p.out, p.scaling};
  lora_up_forward_group(&m, &t, 1, p.n, p.r, stream);
}

void lora_up_forward_group(const LoraUpEpilogue* members, const TensorView* t, int count, int64_t n, int64_t r,
                           cudaStream_t stream) {
  ENGINE_CHECK(count >= 1 && count <= kLoraMaxGroup, "lora_up_forward: 1 to ", kLoraMaxGroup, " members, got ", count);
  const DType dtype = members[0].y.dtype;
  int64_t total = 0;
  for (int g = 0; g < count; ++g) {
    const LoraUpParams p{n, members[g].out, r, members[g].scaling};
    lora_up_forward_check(members[g].y, t[g], members[g].b, p);
    check_cuda(members[g].y, members[g].b, p, "lora_up_forward");
    ENGINE_CHECK(members[g].y.dtype == dtype, "lora_up_forward: members of one dtype, got ", engine::dtype_name(dtype),
                 " and ", members[g].y.str());
    total += n * (members[g].out / kV);
  }
  if (total == 0) return;
  const unsigned grid = unsigned(std::min<int64_t>((total + kThreads - 1) / kThreads, 16 * int64_t(sm_count())));
  OPS_DISPATCH_FLOAT(dtype, T, dispatch_rank(r, [&](auto rr) {
    UpFwdGroup<T> grp{};
    grp.count = count;
    grp.total = total;
    int64_t begin = 0;
    for (int g = 0; g < count; ++g) {
      const LoraUpEpilogue& m = members[g];
      grp.m[g] = UpFwdMember<T>{m.y.ptr<T>(), t[g].ptr<const T>(), m.b.ptr<const T>(), m.out, begin, m.scaling};
      begin += n * (m.out / kV);
    }
    lora_up_fwd_kernel<T, decltype(rr)::value><<<grid, kThreads, 0, stream>>>(grp);
  }));
  CUDA_CHECK_LAST();
}

void lora_up_backward(TensorView dt, TensorView db, TensorView dy, TensorView t, TensorView b, TensorView workspace,
                      const LoraUpParams& p, cudaStream_t stream) {
  lora_up_backward_check(dt, db, dy, t, b, p);
  if (p.n == 0) return;
  const LoraUpPartials m{dy, t, b, db, workspace, p.out, p.scaling};
  lora_up_backward_partials(&m, 1, p.n, p.r, stream);
  const int64_t chunks = lora_up_chunks(p.out), slabs = lora_up_slabs(p.n);
  const float* ws_dt = workspace.ptr<float>();
  const float* ws_db = ws_dt + chunks * p.n * p.r;
  const int64_t elems = (p.n + p.out) * p.r;
  const unsigned rgrid = unsigned(std::min<int64_t>((elems + 255) / 256, 1024));
  OPS_DISPATCH_FLOAT(dy.dtype, T, {
    lora_up_reduce_kernel<T><<<rgrid, 256, 0, stream>>>(dt.ptr<T>(), db.ptr<float>(), ws_dt, ws_db, p, chunks, slabs);
  });
  CUDA_CHECK_LAST();
}

void lora_up_backward_partials(const LoraUpPartials* members, int count, int64_t n, int64_t r, cudaStream_t stream) {
  ENGINE_CHECK(count >= 1 && count <= kLoraMaxGroup, "lora_up_backward_partials: 1 to ", kLoraMaxGroup,
               " members, got ", count);
  const DType dtype = members[0].dy.dtype;
  int64_t chunks = 0;
  for (int g = 0; g < count; ++g) {
    const LoraUpPartials& m = members[g];
    const LoraUpParams p{n, m.out, r, m.scaling};
    TensorView dt_shape = m.t;  // dt has t's shape and dtype; only the checks read it
    lora_up_backward_check(dt_shape, m.db, m.dy, m.t, m.b, p);
    check_cuda(m.dy, m.b, p, "lora_up_backward");
    ENGINE_CHECK(m.dy.dtype == dtype, "lora_up_backward_partials: members of one dtype, got ",
                 engine::dtype_name(dtype), " and ", m.dy.str());
    ENGINE_CHECK(m.db.dtype == DType::kF32, "lora_up_backward: dB must be f32 on CUDA, got ", m.db.str());
    const int64_t need = lora_up_workspace_elems(n, m.out, r);
    ENGINE_CHECK(m.workspace.defined() && m.workspace.dtype == DType::kF32 && m.workspace.numel() >= need,
                 "lora_up_backward: workspace must be f32 with >= ", need, " elements, got ", m.workspace.str());
    chunks += lora_up_chunks(m.out);
  }
  if (n == 0) return;
  const int64_t slabs = lora_up_slabs(n);
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(slabs));
  OPS_DISPATCH_FLOAT(dtype, T, dispatch_rank(r, [&](auto rr) {
    UpBwdGroup<T> grp{};
    grp.count = count;
    grp.n = n;
    grp.slab_rows = (n + slabs - 1) / slabs;
    int64_t chunk0 = 0;
    for (int g = 0; g < count; ++g) {
      const LoraUpPartials& m = members[g];
      float* ws = m.workspace.ptr<float>();
      grp.m[g] = UpBwdMember<T>{ws, ws + lora_up_chunks(m.out) * n * r, m.dy.ptr<const T>(), m.t.ptr<const T>(),
                                m.b.ptr<const T>(), m.out, chunk0};
      chunk0 += lora_up_chunks(m.out);
    }
    lora_up_bwd_kernel<T, decltype(rr)::value><<<grid, kThreads, 0, stream>>>(grp);
  }));
  CUDA_CHECK_LAST();
}

}  // namespace cuda
}  // namespace ops
