// ops/lora_down_cpu.cpp: reference fused LoRA down-projection, plain loops with f64 sums. The mask and the
// dropout product follow ops/dropout_cpu.cpp (x * f32 scale rounded to f32, then to x's dtype), so the
// rounding points are those of dropout_forward + matmul (forward) and of torch's matmul + dropout backward +
// autograd's add (dx; see ops/lora_down.h).
#include "ops/lora_down.h"
#include "ops/lora_up.h"

#include <algorithm>
#include <vector>

#include "engine/philox.h"

namespace ops {

int64_t lora_down_slabs(int64_t n) { return std::min<int64_t>(64, std::max<int64_t>(1, (n + 31) / 32)); }

int64_t lora_down_fwd_warps_per_row(int64_t n, int64_t in) {
  // Double while there are fewer than 512 blocks of 8 / wr rows (~4 per SM: the kernel is latency-bound at
  // a few hundred rows) and the doubled warps still give every lane of a row at least one 8-element vector.
  int64_t wr = 1;
  while (wr < 8 && (n * wr + 7) / 8 < 512 && in / 8 >= wr * 64) wr *= 2;
  return wr;
}

int64_t lora_down_workspace_elems(int64_t n, int64_t in, int64_t r) { return lora_down_slabs(n) * r * in; }

namespace {
void check_common(TensorView x, TensorView a, const LoraDownParams& p, const char* what) {
  check_float(x, "lora_down x");
  ENGINE_CHECK(a.dtype == x.dtype, what, ": a ", a.str(), " must have x's dtype ", x.str());
  ENGINE_CHECK(p.n >= 0 && p.in >= 1 && p.r >= 1 && p.r <= kLoraDownMaxRank, what, ": n=", p.n, " in=", p.in,
               " r=", p.r, " (need in >= 1, 1 <= r <= ", kLoraDownMaxRank, ")");
  ENGINE_CHECK(x.numel() == p.n * p.in, what, ": x ", x.str(), " must hold n=", p.n, " x in=", p.in);
  ENGINE_CHECK(a.numel() == p.r * p.in, what, ": a ", a.str(), " must hold r=", p.r, " x in=", p.in);
  ENGINE_CHECK(p.p >= 0.0f && p.p < 1.0f, what, ": p=", p.p, " must be in [0, 1)");
}

// CUDA computes products and sums in f32 before rounding to a 16-bit dtype; f64 (CPU only) stays exact.
double opmath(double v, DType t) { return t == DType::kF64 ? v : double(float(v)); }

// keep(i) for flat element i of x: one Philox call per 8 stream indices, as ops::cpu::dropout.
class Mask {
 public:
  explicit Mask(const LoraDownParams& p) : p_(p) {}
  bool keep(int64_t i) {
    if (p_.p == 0.0f) return true;
    const uint64_t idx = p_.offset + uint64_t(i);
    if (idx >> 3 != block_id_) block_ = engine::philox4x32_10(p_.seed, block_id_ = idx >> 3, p_.stream);
    return engine::dropout_keep(engine::philox_half(block_, int(idx & 7)), p_.p);
  }

 private:
  LoraDownParams p_;
  engine::Philox4 block_{};
  uint64_t block_id_ = ~uint64_t(0);
};
}  // namespace

void lora_down_forward_check(TensorView t, TensorView x, TensorView a, const LoraDownParams& p,
                             const LoraUpEpilogue* up) {
  check_common(x, a, p, "lora_down_forward");
  ENGINE_CHECK(t.dtype == x.dtype && t.numel() == p.n * p.r, "lora_down_forward: t ", t.str(), " must be ",
               engine::dtype_name(x.dtype), " with n=", p.n, " x r=", p.r, " elements");
  if (up != nullptr) lora_up_forward_check(up->y, t, up->b, {p.n, up->out, p.r, up->scaling});
}

void lora_down_backward_check(TensorView da, TensorView dx, TensorView dt, TensorView x, TensorView a,
                              const LoraDownParams& p) {
  check_common(x, a, p, "lora_down_backward");
  ENGINE_CHECK(dt.dtype == x.dtype && dt.numel() == p.n * p.r, "lora_down_backward: dt ", dt.str(), " must be ",
               engine::dtype_name(x.dtype), " with n=", p.n, " x r=", p.r, " elements");
  ENGINE_CHECK(da.defined() && (da.dtype == DType::kF32 || da.dtype == DType::kF64) && da.numel() == p.r * p.in,
               "lora_down_backward: dA ", da.str(), " must be f32 with r=", p.r, " x in=", p.in, " elements");
  ENGINE_CHECK(!dx.defined() || (dx.dtype == x.dtype && dx.numel() == p.n * p.in), "lora_down_backward: dx ",
               dx.str(), " must be ", engine::dtype_name(x.dtype), " with n=", p.n, " x in=", p.in, " elements");
}

namespace cpu {

void lora_down_forward(TensorView t, TensorView x, TensorView a, const LoraDownParams& p, const LoraUpEpilogue* up) {
  lora_down_forward_check(t, x, a, p, up);
  const double scale = double(1.0f / (1.0f - p.p));
  Mask mask(p);
  std::vector<double> xd(size_t(p.in), 0.0);
  for (int64_t m = 0; m < p.n; ++m) {
    for (int64_t k = 0; k < p.in; ++k) {
      const int64_t i = m * p.in + k;
      xd[size_t(k)] = mask.keep(i) ? engine::round_to(x.dtype, opmath(engine::load_f64(x.data, x.dtype, i) * scale, x.dtype)) : 0.0;
    }
    for (int64_t j = 0; j < p.r; ++j) {
      double s = 0;
      for (int64_t k = 0; k < p.in; ++k) s += xd[size_t(k)] * engine::load_f64(a.data, a.dtype, j * p.in + k);
      engine::store_f64(t.data, t.dtype, m * p.r + j, s);
    }
  }
  if (up != nullptr) lora_up_forward(up->y, t, up->b, {p.n, up->out, p.r, up->scaling});
}

void lora_down_backward(TensorView da, TensorView dx, Accum dx_mode, TensorView dt, TensorView x, TensorView a,
                        const LoraDownParams& p) {
  lora_down_backward_check(da, dx, dt, x, a, p);
  const double scale = double(1.0f / (1.0f - p.p));
  Mask mask(p);
  std::vector<double> sum(size_t(p.r * p.in), 0.0), dtr(size_t(p.r));
  for (int64_t m = 0; m < p.n; ++m) {
    for (int64_t j = 0; j < p.r; ++j) dtr[size_t(j)] = engine::load_f64(dt.data, dt.dtype, m * p.r + j);
    for (int64_t k = 0; k < p.in; ++k) {
      const int64_t i = m * p.in + k;
      const bool keep = mask.keep(i);
      const double xd = keep ? engine::round_to(x.dtype, opmath(engine::load_f64(x.data, x.dtype, i) * scale, x.dtype)) : 0.0;
      for (int64_t j = 0; j < p.r; ++j) sum[size_t(j * p.in + k)] += dtr[size_t(j)] * xd;
      if (!dx.defined()) continue;
      double v = 0;
      if (keep) {
        double g = 0;
        for (int64_t j = 0; j < p.r; ++j) g += dtr[size_t(j)] * engine::load_f64(a.data, a.dtype, j * p.in + k);
        v = engine::round_to(x.dtype, opmath(engine::round_to(x.dtype, g) * scale, x.dtype));
      }
      if (dx_mode == Accum::kAdd) v = opmath(v + engine::load_f64(dx.data, dx.dtype, i), x.dtype);
      engine::store_f64(dx.data, dx.dtype, i, v);
    }
  }
  for (int64_t i = 0; i < p.r * p.in; ++i)
    engine::store_f64(da.data, da.dtype, i, engine::load_f64(da.data, da.dtype, i) + sum[size_t(i)]);
}

}  // namespace cpu
}  // namespace ops
