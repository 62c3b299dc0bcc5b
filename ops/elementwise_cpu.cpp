// ops/elementwise_cpu.cpp: reference elementwise ops, plain loops through f64. For one + or * of f32 (or
// narrower) values, rounding the f64 result to f32 equals rounding the exact result once (53 >= 2*24 + 2,
// Figueroa 1995), so add, scale and cast match CUDA's f32 math bit for bit; accumulate's fma may not.
#include "ops/elementwise.h"

#include <cstdint>

namespace ops {

void elementwise_check(const char* op, TensorView out, std::initializer_list<TensorView> inputs, bool same_dtype) {
  check_float(out, op);
  const auto lo = [](const TensorView& t) { return reinterpret_cast<uintptr_t>(t.data); };
  for (const TensorView& in : inputs) {
    check_float(in, op);
    ENGINE_CHECK(in.numel() == out.numel(), op, ": input ", in.str(), " and out ", out.str(),
                 " differ in element count");
    ENGINE_CHECK(!same_dtype || in.dtype == out.dtype, op, ": input ", in.str(), " must have out's dtype ",
                 out.str());
    const bool same = in.data == out.data && in.dtype == out.dtype;
    const bool overlap = lo(in) < lo(out) + out.nbytes() && lo(out) < lo(in) + in.nbytes();
    ENGINE_CHECK(same || !overlap, op, ": input ", in.str(), " partially overlaps out ", out.str());
  }
}

namespace cpu {

void add(TensorView out, TensorView a, TensorView b) {
  elementwise_check("add", out, {a, b}, true);
  for (int64_t i = 0; i < out.numel(); ++i)
    engine::store_f64(out.data, out.dtype, i,
                      engine::load_f64(a.data, a.dtype, i) + engine::load_f64(b.data, b.dtype, i));
}

void scale(TensorView out, TensorView x, float alpha) {
  elementwise_check("scale", out, {x}, true);
  for (int64_t i = 0; i < out.numel(); ++i)
    engine::store_f64(out.data, out.dtype, i, double(alpha) * engine::load_f64(x.data, x.dtype, i));
}

void cast(TensorView out, TensorView in) {
  elementwise_check("cast", out, {in}, false);
  for (int64_t i = 0; i < out.numel(); ++i)
    engine::store_f64(out.data, out.dtype, i, engine::load_f64(in.data, in.dtype, i));
}

void accumulate(TensorView out, TensorView x, float alpha, Accum mode) {
  elementwise_check("accumulate", out, {x}, false);
  for (int64_t i = 0; i < out.numel(); ++i) {
    double v = double(alpha) * engine::load_f64(x.data, x.dtype, i);
    if (mode == Accum::kAdd) v += engine::load_f64(out.data, out.dtype, i);
    engine::store_f64(out.data, out.dtype, i, v);
  }
}

}  // namespace cpu
}  // namespace ops
