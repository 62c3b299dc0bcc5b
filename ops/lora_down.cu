// ops/lora_down.cu: fused dropout + LoRA down-projection kernels (SPEC.md §4.1), f32 math on CUDA cores.
// Both kernels move x (and dx) as 8-element vectors (16 bytes of bf16/f16) and draw each vector's 8 mask
// bits from one Philox counter (two when offset % 8 != 0: SH = offset % 8 is a template parameter; since
// in % 8 == 0 every vector starts at the same index modulo 8). The rank is padded to RP = 4 or 16.
//   Forward: whole rows per warp group, so t needs no second pass: a block holds 8 / WR rows, WR warps per
//   row (WR from the shape only: lora_down_fwd_warps_per_row); a lane walks its vectors of the row with kU
//   loads in flight (2 at RP = 4, within 64 registers; 4 at RP = 16) and keeps RP partial dot products,
//   then shuffles, and the row's warps (in warp order) sum them and round t. A is read through L1 (every
//   row reads all of it). With the up epilogue, the row's warps then add s * t B^T to the row of y (a lane
//   per 8-column vector, B's 8 x RP block as RP vectors: ops/lora_up.cu's forward, the same bits).
//   Backward: a block owns 256 columns (a lane per vector, A's 8 columns x RP in registers) and a slab of
//   rows that its 8 warps share row by row: dx from dt[m, :] . A[:, k] and the dA partial from
//   dt[m, :] * xd[m, k] in registers. The warps' partials are summed in warp order into the slab's
//   workspace row; a second kernel adds the slabs to dA in slab order. No atomics: bitwise reproducible.
//   Groups (adapters sharing x): a block runs its work once per member, in member order, so each member gets
//   the bits of its own call; the backward stages each member's dt rows in shared memory, either read or
//   summed from lora_up's chunk partials (its reduce, moved here), and the reduce also finishes lora_up's dB.
#include <algorithm>
#include <cstdint>

#include "engine/philox.h"
#include "ops/cuda_common.cuh"
#include "ops/lora_down.h"

namespace ops {
namespace {

constexpr int kThreads = 256, kWarps = kThreads / 32, kV = 8;

template <typename T>
__device__ __forceinline__ float round_to(float v) { return to_f32(from_f32<T>(v)); }

// xd[k] = keep ? round_T(x * scale) : 0 for the 8 elements of one vector starting at stream index s.
template <typename T, int SH, bool kDrop>
__device__ __forceinline__ unsigned masked8(const Vec<T, kV>& xv, const LoraDownParams& p, uint64_t stream, uint64_t s,
                                            float scale, float (&xd)[kV]) {
  const unsigned keep = kDrop ? engine::dropout_keep8<SH>(p.seed, stream, s, p.p) : 0xFFu;
#pragma unroll
  for (int k = 0; k < kV; ++k)
    xd[k] = !kDrop ? to_f32(xv.v[k]) : ((keep >> k) & 1u) ? round_to<T>(__fmul_rn(to_f32(xv.v[k]), scale)) : 0.f;
  return keep;
}

// A forward member: t = xd A^T, and with kUp y += s * t B^T: y (n, out), b (out, RP).
template <typename T>
struct FwdMember {
  T* t;
  const T* a;
  uint64_t stream;
  T* y;
  const T* b;
  int64_t out;
  float s;
};
template <typename T>
struct FwdGroup {
  FwdMember<T> m[kLoraMaxGroup];
  int count;
};

// Block: rows [rb * blockIdx.x, ...), rb = 8 / wr, each row summed by wr warps (part = warp % wr), a lane
// per vector v = 32 part + lane + 32 wr q. Up to kU vectors of x are loaded before any math. The members
// run one after another (x's row comes from L1/L2 after the first).
template <typename T, int RP, int SH, bool kDrop, bool kUp>
__global__ void __launch_bounds__(kThreads, RP <= 4 ? 4 : 2)
    lora_down_fwd_kernel(FwdGroup<T> grp, const T* __restrict__ x, LoraDownParams p, int wr, float scale) {
  constexpr int kU = RP <= 4 ? 2 : 4;  // within 64 registers (4 blocks per SM) at RP = 4
  __shared__ float red[kWarps][RP];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int rb = kWarps / wr, part = warp % wr;
  const int64_t m = int64_t(blockIdx.x) * rb + warp / wr, nv = p.in / kV, step = int64_t(wr) * 32;
  for (int g = 0; g < grp.count; ++g) {
    const FwdMember<T> mb = grp.m[g];
    float s[RP];
#pragma unroll
    for (int j = 0; j < RP; ++j) s[j] = 0.f;
    if (m < p.n) {
      const Vec<T, kV>* xr = reinterpret_cast<const Vec<T, kV>*>(x + m * p.in);
      const uint64_t base = p.offset + uint64_t(m * p.in);
      for (int64_t v0 = int64_t(part) * 32 + lane; v0 < nv; v0 += kU * step) {
        Vec<T, kV> xv[kU];
#pragma unroll
        for (int u = 0; u < kU; ++u)
          if (v0 + u * step < nv) xv[u] = xr[v0 + u * step];
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          const int64_t v = v0 + u * step;
          if (v >= nv) break;
          float xd[kV];
          masked8<T, SH, kDrop>(xv[u], p, mb.stream, base + uint64_t(v * kV), scale, xd);
#pragma unroll
          for (int j = 0; j < RP; ++j) {
            if (j >= p.r) break;
            const Vec<T, kV> w = reinterpret_cast<const Vec<T, kV>*>(mb.a + int64_t(j) * p.in)[v];
#pragma unroll
            for (int k = 0; k < kV; ++k) s[j] = fmaf(xd[k], to_f32(w.v[k]), s[j]);
          }
        }
      }
    }
#pragma unroll
    for (int j = 0; j < RP; ++j) s[j] = warp_sum(s[j]);
    if (lane == 0)
#pragma unroll
      for (int j = 0; j < RP; ++j) red[warp][j] = s[j];
    __syncthreads();
    if (m < p.n && part == 0 && lane < p.r) {
      float acc = red[warp][lane];
      for (int q = 1; q < wr; ++q) acc += red[warp + q][lane];
      mb.t[m * p.r + lane] = from_f32<T>(acc);
    }
    if constexpr (kUp) {
      if (m < p.n) {
        float tr[RP];  // t[m, :] as stored: the same sums in the same order, rounded
#pragma unroll
        for (int j = 0; j < RP; ++j) {
          float acc = red[warp - part][j];
          for (int q = 1; q < wr; ++q) acc += red[warp - part + q][j];
          tr[j] = round_to<T>(acc);
        }
        Vec<T, kV>* yr = reinterpret_cast<Vec<T, kV>*>(mb.y + m * mb.out);
        const Vec<T, kV>* bv = reinterpret_cast<const Vec<T, kV>*>(mb.b);
#pragma unroll 2
        for (int64_t v = int64_t(part) * 32 + lane; v < mb.out / kV; v += step) {
          Vec<T, kV> bb[RP];  // b[8 v + k, j] = bb[(k RP + j) / 8].v[(k RP + j) % 8]
#pragma unroll
          for (int q = 0; q < RP; ++q) bb[q] = bv[v * RP + q];
          Vec<T, kV> yv = yr[v];
#pragma unroll
          for (int k = 0; k < kV; ++k) {
            float acc = 0.f;
#pragma unroll
            for (int j = 0; j < RP; ++j) acc = fmaf(tr[j], to_f32(bb[(k * RP + j) / kV].v[(k * RP + j) % kV]), acc);
            yv.v[k] = from_f32<T>(fmaf(mb.s, acc, to_f32(yv.v[k])));
          }
          yr[v] = yv;
        }
      }
    }
    __syncthreads();  // red is the next member's
  }
}

// A backward member: dt given (dt) or as lora_up's chunk partials (ws_dt: chunks x n x r, dt = round(s * sum
// in chunk order), ops/lora_up.cu's reduce); its dA slab partials go to ws (slabs x r x in).
template <typename T>
struct BwdMember {
  float* ws;
  const T* dt;
  const float* ws_dt;
  int64_t chunks;
  float s;
  const T* a;
  uint64_t stream;
};
template <typename T>
struct BwdGroup {
  BwdMember<T> m[kLoraMaxGroup];
  int count;
};
constexpr int kDtTile = 64;  // rows of dt staged in shared memory at a time

// Block (x, y): columns [256 x, 256 x + 256), rows [y * slab_rows, ...). Per member (in order): dt's rows
// staged in shared memory kDtTile at a time, then the rows; writes the member's ws[y][j][col] for j < r.
template <typename T, int RP, int SH, bool kDrop, bool kDx>
__global__ void __launch_bounds__(kThreads) lora_down_bwd_kernel(BwdGroup<T> grp, T* __restrict__ dx, bool accumulate,
                                                                  const T* __restrict__ x, LoraDownParams p,
                                                                  int64_t slab_rows, float scale) {
  __shared__ __align__(16) float red[RP][32 * kV];  // the block's 256 columns
  __shared__ float dts[kDtTile][RP];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t nv = p.in / kV, v = int64_t(blockIdx.x) * 32 + lane;
  const bool active = v < nv;
  const int64_t m_begin = int64_t(blockIdx.y) * slab_rows;
  const int64_t m_end = m_begin + slab_rows < p.n ? m_begin + slab_rows : p.n;
  for (int gi = 0; gi < grp.count; ++gi) {
    const BwdMember<T> mb = grp.m[gi];
    const bool add_dx = accumulate || gi > 0;
    Vec<T, kV> av[RP];
#pragma unroll
    for (int j = 0; j < RP; ++j) {
      if (active && j < p.r) av[j] = reinterpret_cast<const Vec<T, kV>*>(mb.a + int64_t(j) * p.in)[v];
      else
#pragma unroll
        for (int k = 0; k < kV; ++k) av[j].v[k] = from_f32<T>(0.f);
    }
    float acc[RP][kV];
#pragma unroll
    for (int j = 0; j < RP; ++j)
#pragma unroll
      for (int k = 0; k < kV; ++k) acc[j][k] = 0.f;
    for (int64_t tile = m_begin; tile < m_end; tile += kDtTile) {
      const int64_t tile_end = tile + kDtTile < m_end ? tile + kDtTile : m_end;
      __syncthreads();  // the previous tile's (or member's) dts reads are done
      for (int64_t e = threadIdx.x; e < (tile_end - tile) * RP; e += kThreads) {
        const int64_t row = tile + e / RP;
        const int j = int(e % RP);
        float val = 0.f;
        if (j < p.r) {
          if (mb.dt != nullptr) {
            val = to_f32(mb.dt[row * p.r + j]);
          } else {  // lora_up's reduce: the chunks in order, scaled and rounded once
            const int64_t i = row * p.r + j, n_dt = p.n * p.r;
            float sum = mb.ws_dt[i];
            for (int64_t q = 1; q < mb.chunks; ++q) sum += mb.ws_dt[q * n_dt + i];
            val = round_to<T>(mb.s * sum);
          }
        }
        dts[e / RP][j] = val;
      }
      __syncthreads();
      if (active) {
#pragma unroll 2
        for (int64_t m = tile + warp; m < tile_end; m += kWarps) {
          float g[RP];
#pragma unroll
          for (int j = 0; j < RP; ++j) g[j] = dts[m - tile][j];
          const Vec<T, kV> xv = reinterpret_cast<const Vec<T, kV>*>(x + m * p.in)[v];
          Vec<T, kV> dxv;
          if (kDx && add_dx) dxv = reinterpret_cast<const Vec<T, kV>*>(dx + m * p.in)[v];
          float xd[kV];
          const unsigned keep =
              masked8<T, SH, kDrop>(xv, p, mb.stream, p.offset + uint64_t(m * p.in + v * kV), scale, xd);
#pragma unroll
          for (int k = 0; k < kV; ++k) {
#pragma unroll
            for (int j = 0; j < RP; ++j) acc[j][k] = fmaf(g[j], xd[k], acc[j][k]);
            if (kDx) {
              float s = 0.f;
#pragma unroll
              for (int j = 0; j < RP; ++j) s = fmaf(g[j], to_f32(av[j].v[k]), s);
              float o = ((keep >> k) & 1u) ? (kDrop ? round_to<T>(__fmul_rn(round_to<T>(s), scale)) : round_to<T>(s))
                                           : 0.f;
              if (add_dx) o = __fadd_rn(o, to_f32(dxv.v[k]));
              dxv.v[k] = from_f32<T>(o);
            }
          }
          if (kDx) reinterpret_cast<Vec<T, kV>*>(dx + m * p.in)[v] = dxv;
        }
      }
    }
    // Sum the warps' partials in warp order, then write this slab's rows of the member's workspace.
    for (int w = 0; w < kWarps; ++w) {
      if (warp == w) {
#pragma unroll
        for (int j = 0; j < RP; ++j) {
          float4* dst = reinterpret_cast<float4*>(&red[j][lane * kV]);
          float4 lo = make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]);
          float4 hi = make_float4(acc[j][4], acc[j][5], acc[j][6], acc[j][7]);
          if (w > 0) {
            const float4 l0 = dst[0], h0 = dst[1];
            lo = make_float4(l0.x + lo.x, l0.y + lo.y, l0.z + lo.z, l0.w + lo.w);
            hi = make_float4(h0.x + hi.x, h0.y + hi.y, h0.z + hi.z, h0.w + hi.w);
          }
          dst[0] = lo;
          dst[1] = hi;
        }
      }
      __syncthreads();
    }
    const int64_t col0 = int64_t(blockIdx.x) * 32 * kV;
    for (int e = threadIdx.x; e < RP * 32 * kV; e += kThreads) {
      const int j = e / (32 * kV), c = e % (32 * kV);
      if (j < p.r && col0 + c < p.in) mb.ws[(int64_t(blockIdx.y) * p.r + j) * p.in + col0 + c] = red[j][c];
    }
    __syncthreads();  // red is the next member's
  }
}

// dst[i] = fmaf(scale, sum over parts of ws[part][i] in part order, dst[i]) for each segment: the members' dA
// (scale 1: dA += sum, exactly) and, after lora_up's partials, their dB (scale = the member's scaling).
struct ReduceSeg {
  float* dst;
  const float* ws;
  int64_t elems, parts;
  float scale;
};
struct ReduceSegs {
  ReduceSeg s[2 * kLoraMaxGroup];
  int count;
  int64_t total;
};

__global__ void lora_reduce_kernel(ReduceSegs segs) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < segs.total;
       i += int64_t(gridDim.x) * blockDim.x) {
    int q = 0;
    int64_t e = i;
    while (e >= segs.s[q].elems) e -= segs.s[q++].elems;
    const ReduceSeg& sg = segs.s[q];
    float s = sg.ws[e];
    for (int64_t part = 1; part < sg.parts; ++part) s += sg.ws[part * sg.elems + e];
    sg.dst[e] = fmaf(sg.scale, s, sg.dst[e]);
  }
}

void check_cuda(const TensorView& x, const TensorView& a, const TensorView& dx, const LoraDownParams& p,
                const char* what) {
  ENGINE_CHECK(x.dtype != DType::kF64, what, ": f64 is CPU-only (", x.str(), ")");
  ENGINE_CHECK(lora_down_fusable(p.in, p.r), what, ": CUDA needs in % 8 == 0 and 1 <= r <= ", kLoraDownMaxRank,
               ", got in=", p.in, " r=", p.r);
  ENGINE_CHECK(vec8_aligned({x, a, dx}), what, ": x, a and dx must be 8-element aligned");
}

// Calls f(SH, kDrop) with compile-time constants: SH = offset % 8 matters only with a mask.
template <typename F>
void dispatch_mask(const LoraDownParams& p, F f) {
  if (p.p == 0.0f) f(std::integral_constant<int, 0>{}, std::false_type{});
  else dispatch_mod8(p.offset, [&](auto sh) { f(sh, std::true_type{}); });
}

}  // namespace

namespace cuda {

void lora_down_forward(TensorView t, TensorView x, TensorView a, const LoraDownParams& p, cudaStream_t stream,
                       const LoraUpEpilogue* up) {
  LoraDownMember m;
  m.a = a;
  m.t = t;
  m.stream = p.stream;
  if (up != nullptr) m.up = *up;
  lora_down_forward_group(x, &m, 1, p, stream);
}

void lora_down_forward_group(TensorView x, const LoraDownMember* members, int count, const LoraDownParams& p,
                             cudaStream_t stream) {
  ENGINE_CHECK(count >= 1 && count <= kLoraMaxGroup, "lora_down_forward: 1 to ", kLoraMaxGroup, " members, got ",
               count);
  const bool with_up = members[0].up.y.defined();
  for (int g = 0; g < count; ++g) {
    const LoraDownMember& m = members[g];
    ENGINE_CHECK(m.up.y.defined() == with_up, "lora_down_forward: the up epilogue is for all members or none");
    lora_down_forward_check(m.t, x, m.a, p, with_up ? &m.up : nullptr);
    check_cuda(x, m.a, TensorView{}, p, "lora_down_forward");
    if (with_up)
      ENGINE_CHECK(lora_down_fuses_up(m.up.out, p.r) && vec8_aligned({m.up.y, m.up.b}),
                   "lora_down_forward: the up epilogue needs r = 4 or 16, out % 8 == 0 and 8-element aligned y and "
                   "b, got r=", p.r, " out=", m.up.out, " y ", m.up.y.str(), " b ", m.up.b.str());
  }
  if (p.n == 0) return;
  const float scale = 1.0f / (1.0f - p.p);
  const int wr = int(lora_down_fwd_warps_per_row(p.n, p.in));
  const unsigned grid = unsigned((p.n + kWarps / wr - 1) / (kWarps / wr));
  OPS_DISPATCH_FLOAT(x.dtype, T, dispatch_mask(p, [&](auto sh, auto drop) {
    constexpr int SH = decltype(sh)::value;
    constexpr bool kDrop = decltype(drop)::value;
    FwdGroup<T> grp{};
    grp.count = count;
    for (int g = 0; g < count; ++g) {
      const LoraDownMember& m = members[g];
      grp.m[g] = FwdMember<T>{m.t.ptr<T>(), m.a.ptr<const T>(), m.stream,
                              with_up ? m.up.y.ptr<T>() : nullptr, with_up ? m.up.b.ptr<const T>() : nullptr,
                              with_up ? m.up.out : 0, with_up ? m.up.scaling : 0.f};
    }
    auto run = [&](auto rp, auto kup) {  // RP and kUp as compile-time constants
      lora_down_fwd_kernel<T, decltype(rp)::value, SH, kDrop, decltype(kup)::value>
          <<<grid, kThreads, 0, stream>>>(grp, x.ptr<const T>(), p, wr, scale);
    };
    auto with_rank = [&](auto rp) {
      if (with_up) run(rp, std::true_type{});
      else run(rp, std::false_type{});
    };
    if (p.r <= 4) with_rank(std::integral_constant<int, 4>{});
    else with_rank(std::integral_constant<int, 16>{});
  }));
  CUDA_CHECK_LAST();
}

void lora_down_backward(TensorView da, TensorView dx, Accum dx_mode, TensorView dt, TensorView x, TensorView a,
                        TensorView workspace, const LoraDownParams& p, cudaStream_t stream) {
  LoraDownMember m;
  m.a = a;
  m.t = dt;
  m.da = da;
  m.stream = p.stream;
  lora_down_backward_group(dx, dx_mode, x, &m, 1, workspace, p, stream);
}

void lora_down_backward_group(TensorView dx, Accum dx_mode, TensorView x, const LoraDownMember* members, int count,
                              TensorView workspace, const LoraDownParams& p, cudaStream_t stream) {
  ENGINE_CHECK(count >= 1 && count <= kLoraMaxGroup, "lora_down_backward: 1 to ", kLoraMaxGroup, " members, got ",
               count);
  const bool from_up = members[0].dt_from != nullptr;
  for (int g = 0; g < count; ++g) {
    const LoraDownMember& m = members[g];
    ENGINE_CHECK((m.dt_from != nullptr) == from_up, "lora_down_backward: dt from lora_up's partials for all members or none");
    lora_down_backward_check(m.da, dx, from_up ? m.dt_from->t : m.t, x, m.a, p);
    check_cuda(x, m.a, dx, p, "lora_down_backward");
    ENGINE_CHECK(m.da.dtype == DType::kF32, "lora_down_backward: dA must be f32 on CUDA, got ", m.da.str());
    if (from_up)
      ENGINE_CHECK(m.dt_from->dy.dtype == x.dtype && m.dt_from->db.dtype == DType::kF32 &&
                       m.dt_from->workspace.numel() >= lora_up_workspace_elems(p.n, m.dt_from->out, p.r),
                   "lora_down_backward: lora_up's partials must have x's dtype and their workspace");
  }
  const int64_t per = lora_down_workspace_elems(p.n, p.in, p.r);
  ENGINE_CHECK(workspace.defined() && workspace.dtype == DType::kF32 && workspace.numel() >= count * per,
               "lora_down_backward: workspace must be f32 with >= ", count * per, " elements, got ", workspace.str());
  if (p.n == 0) return;
  const int64_t slabs = lora_down_slabs(p.n);
  const float scale = 1.0f / (1.0f - p.p);
  const int64_t slab_rows = (p.n + slabs - 1) / slabs;
  const dim3 grid(unsigned((p.in / kV + 31) / 32), unsigned(slabs));
  const bool acc = dx_mode == Accum::kAdd;
  float* ws = workspace.ptr<float>();
  OPS_DISPATCH_FLOAT(x.dtype, T, dispatch_mask(p, [&](auto sh, auto drop) {
    constexpr int SH = decltype(sh)::value;
    constexpr bool kDrop = decltype(drop)::value;
    BwdGroup<T> grp{};
    grp.count = count;
    for (int g = 0; g < count; ++g) {
      const LoraDownMember& m = members[g];
      const LoraUpPartials* u = m.dt_from;
      grp.m[g] = BwdMember<T>{ws + g * per, u ? nullptr : m.t.ptr<const T>(),
                              u ? u->workspace.ptr<const float>() : nullptr, u ? lora_up_chunks(u->out) : 0,
                              u ? u->scaling : 0.f, m.a.ptr<const T>(), m.stream};
    }
    T* dxp = dx.defined() ? dx.ptr<T>() : nullptr;
    auto run = [&](auto rp, auto with_dx) {  // RP and kDx as compile-time constants
      lora_down_bwd_kernel<T, decltype(rp)::value, SH, kDrop, decltype(with_dx)::value>
          <<<grid, kThreads, 0, stream>>>(grp, dxp, acc, x.ptr<const T>(), p, slab_rows, scale);
    };
    auto with_rank = [&](auto rp) {
      if (dx.defined()) run(rp, std::true_type{});
      else run(rp, std::false_type{});
    };
    if (p.r <= 4) with_rank(std::integral_constant<int, 4>{});
    else with_rank(std::integral_constant<int, 16>{});
  }));
  CUDA_CHECK_LAST();
  ReduceSegs segs{};
  for (int g = 0; g < count; ++g) {
    segs.s[segs.count++] = ReduceSeg{members[g].da.ptr<float>(), ws + g * per, p.r * p.in, slabs, 1.f};
    if (const LoraUpPartials* u = members[g].dt_from) {
      const float* ws_db = u->workspace.ptr<const float>() + lora_up_chunks(u->out) * p.n * p.r;
      segs.s[segs.count++] = ReduceSeg{u->db.ptr<float>(), ws_db, u->out * p.r, lora_up_slabs(p.n), u->scaling};
    }
  }
  for (int q = 0; q < segs.count; ++q) segs.total += segs.s[q].elems;
  lora_reduce_kernel<<<unsigned(std::min<int64_t>((segs.total + 255) / 256, 1024)), 256, 0, stream>>>(segs);
  CUDA_CHECK_LAST();
}

}  // namespace cuda
}  // namespace ops
