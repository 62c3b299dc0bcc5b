// ops/embedding_cpu.cpp: reference scaled embedding (SPEC.md §1.1). Products of a 16-bit value and a 16-bit
// normalizer are exact in f64, so round_to(dtype, e * s) is the single rounding HF's multiply performs.
// Backward: out[i, c] = table[ids[i], c] * s is linear in the table, so d table[v, c] = sum over i with
// ids[i] = v of dout[i, c] * s.
#include "ops/embedding.h"

#include <cmath>

namespace ops {

EmbeddingParams embedding_params(TensorView ids, TensorView table) {
  ENGINE_CHECK(table.shape.ndim == 2, "embedding: table ", table.str(), " must be (V, D)");
  EmbeddingParams p;
  p.tokens = ids.numel();
  p.vocab = table.shape[0];
  p.dim = table.shape[1];
  p.scale = float(std::sqrt(double(p.dim)));
  return p;
}

void embedding_check(TensorView out, TensorView ids, TensorView table, const EmbeddingParams& p) {
  ENGINE_CHECK(p.tokens >= 0 && p.dim > 0 && p.vocab > 0, "embedding: bad sizes tokens=", p.tokens, " dim=", p.dim,
               " vocab=", p.vocab);
  check_dtype(ids, {DType::kI32}, "embedding ids");
  check_float(table, "embedding table");
  check_float(out, "embedding out");
  ENGINE_CHECK(ids.numel() == p.tokens, "embedding: ids ", ids.str(), " must hold tokens=", p.tokens);
  ENGINE_CHECK(table.numel() == p.vocab * p.dim, "embedding: table ", table.str(), " must hold vocab=", p.vocab,
               " x dim=", p.dim);
  ENGINE_CHECK(out.numel() == p.tokens * p.dim, "embedding: out ", out.str(), " must hold tokens=", p.tokens,
               " x dim=", p.dim);
}

namespace {
// Every id in [0, V), else throw naming the first bad one.
void check_ids(TensorView ids, const EmbeddingParams& p) {
  const int32_t* id = ids.ptr<const int32_t>();
  for (int64_t i = 0; i < p.tokens; ++i)
    ENGINE_CHECK(0 <= id[i] && id[i] < p.vocab, "embedding: ids[", i, "] = ", id[i], " is outside [0, ",
                 p.vocab, ")");
}
}  // namespace

namespace cpu {

void embedding_forward(TensorView out, TensorView ids, TensorView table, const EmbeddingParams& p) {
  embedding_check(out, ids, table, p);
  check_ids(ids, p);
  const double s = engine::round_to(table.dtype, double(p.scale));
  const int32_t* id = ids.ptr<const int32_t>();
  for (int64_t i = 0; i < p.tokens; ++i)
    for (int64_t c = 0; c < p.dim; ++c) {
      const double e = engine::load_f64(table.data, table.dtype, int64_t(id[i]) * p.dim + c);
      engine::store_f64(out.data, out.dtype, i * p.dim + c, engine::round_to(table.dtype, e * s));
    }
}

void embedding_backward(TensorView dtable, TensorView dout, TensorView ids, const EmbeddingParams& p) {
  embedding_check(dout, ids, dtable, p);
  check_dtype(dtable, {DType::kF32, DType::kF64}, "embedding dtable");
  check_ids(ids, p);
  const double s = engine::round_to(dout.dtype, double(p.scale));
  const int32_t* id = ids.ptr<const int32_t>();
  for (int64_t i = 0; i < p.tokens; ++i)
    for (int64_t c = 0; c < p.dim; ++c) {
      const int64_t t = int64_t(id[i]) * p.dim + c;
      const double g = engine::round_to(dout.dtype, engine::load_f64(dout.data, dout.dtype, i * p.dim + c) * s);
      engine::store_f64(dtable.data, dtable.dtype, t, engine::load_f64(dtable.data, dtable.dtype, t) + g);
    }
}

}  // namespace cpu
}  // namespace ops
