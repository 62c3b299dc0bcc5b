// ops/matmul_cpu.cpp: reference matmul (plain loops, f64 accumulation), also the CPU backend's GEMM.
// Each C element is one f64 dot product summed in k order (the specification). For speed the loops are
// blocked: op(A) is packed as 4-row panels and op(B) as 8-column panels, and a 4x8 block of C accumulates
// in registers (the compiler vectorises the 8 columns; an AVX2 clone where the CPU has it, never FMA, so
// every machine rounds alike); large GEMMs split their row panels over the cores. The k order of every
// sum is unchanged, so neither blocking nor threads change the result.
#include <algorithm>
#include <thread>
#include <vector>

#include "ops/matmul.h"

namespace ops {
namespace cpu {
namespace {
constexpr int64_t kMR = 4, kNR = 8;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MATMUL_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MATMUL_CPU_CLONES
#endif

// acc (4 x 8) = apan (k x 4)^T @ bpan (k x 8), each sum in k order.
MATMUL_CPU_CLONES void micro_kernel(double (&out)[kMR][kNR], const double* ak, const double* bk, int64_t k) {
  double acc[kMR][kNR] = {};  // local, so it stays in registers (out could alias the panels)
  for (int64_t kk = 0; kk < k; ++kk, ak += kMR, bk += kNR)
    for (int64_t r = 0; r < kMR; ++r)
      for (int64_t c = 0; c < kNR; ++c) acc[r][c] += ak[r] * bk[c];
  for (int64_t r = 0; r < kMR; ++r)
    for (int64_t c = 0; c < kNR; ++c) out[r][c] = acc[r][c];
}
}  // namespace

void matmul(TensorView c, TensorView a, TensorView b, const MatmulParams& p) {
  detail::check_matmul(c, a, b, p);
  const int64_t sa = detail::resolve_stride(p.stride_a, p.m * p.k), sb = detail::resolve_stride(p.stride_b, p.k * p.n),
                sc = detail::resolve_stride(p.stride_c, p.m * p.n);
  const int64_t m = p.m, n = p.n, k = p.k, mp = (m + kMR - 1) / kMR, np = (n + kNR - 1) / kNR;
  std::vector<double> bpan(np * k * kNR);  // op(B) panel jp: [kk][c] = op(B)(kk, jp*8 + c), zero-padded
  // Row panels [ip0, ip1) of batch z: pack op(A), multiply, round into C.
  auto rows = [&](int64_t z, int64_t ip0, int64_t ip1) {
    std::vector<double> apan(k * kMR);  // op(A) rows ip*4.. : [kk][r], zero-padded
    for (int64_t ip = ip0; ip < ip1; ++ip) {
      for (int64_t kk = 0; kk < k; ++kk)
        for (int64_t r = 0; r < kMR; ++r) {
          const int64_t i = ip * kMR + r;
          apan[kk * kMR + r] =
              i < m ? engine::load_f64(a.data, a.dtype, z * sa + (p.trans_a ? kk * m + i : i * k + kk)) : 0.0;
        }
      for (int64_t jp = 0; jp < np; ++jp) {
        double acc[kMR][kNR];
        micro_kernel(acc, apan.data(), &bpan[jp * k * kNR], k);
        for (int64_t r = 0; r < kMR; ++r)
          for (int64_t cc = 0; cc < kNR; ++cc) {
            const int64_t i = ip * kMR + r, j = jp * kNR + cc;
            if (i >= m || j >= n) continue;
            const int64_t ci = z * sc + i * n + j;
            double v = double(p.alpha) * acc[r][cc];
            if (p.beta != 0.f) v += double(p.beta) * engine::load_f64(c.data, c.dtype, ci);
            engine::store_f64(c.data, c.dtype, ci, v);
          }
      }
    }
  };
  // Threads only where the work dwarfs starting them (~2M multiply-adds per thread at least).
  const int64_t threads =
      std::min<int64_t>({int64_t(std::max(1u, std::thread::hardware_concurrency())), mp, m * n * k / (int64_t(1) << 21)});
  for (int64_t z = 0; z < p.batch; ++z) {
    for (int64_t jp = 0; jp < np; ++jp)
      for (int64_t kk = 0; kk < k; ++kk)
        for (int64_t cc = 0; cc < kNR; ++cc) {
          const int64_t j = jp * kNR + cc;
          bpan[(jp * k + kk) * kNR + cc] =
              j < n ? engine::load_f64(b.data, b.dtype, z * sb + (p.trans_b ? j * k + kk : kk * n + j)) : 0.0;
        }
    if (threads <= 1) {
      rows(z, 0, mp);
      continue;
    }
    std::vector<std::thread> pool;
    for (int64_t t = 0; t < threads; ++t) pool.emplace_back(rows, z, mp * t / threads, mp * (t + 1) / threads);
    for (auto& th : pool) th.join();
  }
}
}  // namespace cpu

}  // namespace ops
