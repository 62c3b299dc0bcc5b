// ops/lora_up_cpu.cpp: reference LoRA up-projection, plain loops with f64 sums, rounded once to the output
// dtype (as ops::cpu::matmul with alpha = s and beta = 1 / 0 / 1).
#include "ops/lora_up.h"

#include <algorithm>

#include "ops/lora_down.h"

namespace ops {

int64_t lora_up_slabs(int64_t n) { return lora_down_slabs(n); }

int64_t lora_up_workspace_elems(int64_t n, int64_t out, int64_t r) {
  return lora_up_chunks(out) * n * r + lora_up_slabs(n) * out * r;
}

namespace {
void check_common(TensorView t, TensorView b, const LoraUpParams& p, const char* what) {
  check_float(t, what);
  ENGINE_CHECK(p.n >= 0 && p.out >= 1 && p.r >= 1, what, ": n=", p.n, " out=", p.out, " r=", p.r);
  ENGINE_CHECK(t.numel() == p.n * p.r, what, ": t ", t.str(), " must hold n=", p.n, " x r=", p.r);
  ENGINE_CHECK(b.dtype == t.dtype && b.numel() == p.out * p.r, what, ": b ", b.str(), " must be ",
               engine::dtype_name(t.dtype), " with out=", p.out, " x r=", p.r, " elements");
}
}  // namespace

void lora_up_forward_check(TensorView y, TensorView t, TensorView b, const LoraUpParams& p) {
  check_common(t, b, p, "lora_up_forward");
  ENGINE_CHECK(y.dtype == t.dtype && y.numel() == p.n * p.out, "lora_up_forward: y ", y.str(), " must be ",
               engine::dtype_name(t.dtype), " with n=", p.n, " x out=", p.out, " elements");
}

void lora_up_backward_check(TensorView dt, TensorView db, TensorView dy, TensorView t, TensorView b,
                            const LoraUpParams& p) {
  check_common(t, b, p, "lora_up_backward");
  ENGINE_CHECK(dy.dtype == t.dtype && dy.numel() == p.n * p.out, "lora_up_backward: dy ", dy.str(), " must be ",
               engine::dtype_name(t.dtype), " with n=", p.n, " x out=", p.out, " elements");
  ENGINE_CHECK(dt.dtype == t.dtype && dt.numel() == p.n * p.r, "lora_up_backward: dt ", dt.str(), " must be ",
               engine::dtype_name(t.dtype), " with n=", p.n, " x r=", p.r, " elements");
  ENGINE_CHECK(db.defined() && (db.dtype == DType::kF32 || db.dtype == DType::kF64) && db.numel() == p.out * p.r,
               "lora_up_backward: dB ", db.str(), " must be f32 with out=", p.out, " x r=", p.r, " elements");
}

namespace cpu {

void lora_up_forward(TensorView y, TensorView t, TensorView b, const LoraUpParams& p) {
  lora_up_forward_check(y, t, b, p);
  for (int64_t m = 0; m < p.n; ++m)
    for (int64_t c = 0; c < p.out; ++c) {
      double s = 0;
      for (int64_t j = 0; j < p.r; ++j)
        s += engine::load_f64(t.data, t.dtype, m * p.r + j) * engine::load_f64(b.data, b.dtype, c * p.r + j);
      const int64_t i = m * p.out + c;
      engine::store_f64(y.data, y.dtype, i, engine::load_f64(y.data, y.dtype, i) + double(p.scaling) * s);
    }
}

void lora_up_backward(TensorView dt, TensorView db, TensorView dy, TensorView t, TensorView b,
                      const LoraUpParams& p) {
  lora_up_backward_check(dt, db, dy, t, b, p);
  const double s = p.scaling;
  for (int64_t m = 0; m < p.n; ++m)
    for (int64_t j = 0; j < p.r; ++j) {
      double acc = 0;
      for (int64_t c = 0; c < p.out; ++c)
        acc += engine::load_f64(dy.data, dy.dtype, m * p.out + c) * engine::load_f64(b.data, b.dtype, c * p.r + j);
      engine::store_f64(dt.data, dt.dtype, m * p.r + j, s * acc);
    }
  for (int64_t c = 0; c < p.out; ++c)
    for (int64_t j = 0; j < p.r; ++j) {
      double acc = 0;
      for (int64_t m = 0; m < p.n; ++m)
        acc += engine::load_f64(dy.data, dy.dtype, m * p.out + c) * engine::load_f64(t.data, t.dtype, m * p.r + j);
      const int64_t i = c * p.r + j;
      engine::store_f64(db.data, db.dtype, i, engine::load_f64(db.data, db.dtype, i) + s * acc);
    }
}

}  // namespace cpu
}  // namespace ops
