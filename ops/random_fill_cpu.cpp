// ops/random_fill_cpu.cpp: reference fill, one philox_normal per element (the specification).
#include <cmath>

#include "engine/philox.h"
#include "ops/random_fill.h"

namespace ops {

void random_fill_check(TensorView out, const RandomFillParams& p) {
  ENGINE_CHECK(out.defined() || out.numel() == 0, "random_normal_fill: out is undefined");
  check_float(out, "random_normal_fill out");
  ENGINE_CHECK(std::isfinite(p.std) && p.std >= 0, "random_normal_fill: std must be finite and >= 0, got ", p.std);
  ENGINE_CHECK(p.offset + uint64_t(out.numel()) >= p.offset, "random_normal_fill: offset ", p.offset, " + ",
               out.numel(), " elements overflows the stream's index");
}

namespace cpu {

void random_normal_fill(TensorView out, const RandomFillParams& p) {
  random_fill_check(out, p);
  for (int64_t i = 0; i < out.numel(); ++i)
    engine::store_f64(out.data, out.dtype, i,
                      p.std * double(engine::philox_normal(p.seed, p.stream, p.offset + uint64_t(i))));
}

}  // namespace cpu
}  // namespace ops
