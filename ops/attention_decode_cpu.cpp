// ops/attention_decode_cpu.cpp: reference decode attention, plain loops in f64 with the act-dtype roundings
// of SPEC.md §1.4. The sums run over the same terms in the same order as ops/attention.h's CPU path (the
// f64 GEMM over k = 0..hd-1 for S; the f64 GEMM over keys j ascending for P V, where the masked keys'
// exact-zero terms change nothing), so a prefill reproduces the training op bit for bit.
#include <cmath>
#include <vector>

#include "ops/attention_decode.h"

namespace ops {

void attention_decode_check(TensorView out, TensorView q, TensorView k, TensorView v, const AttentionDecodeParams& p) {
  check_float(q, "attention decode q");
  ENGINE_CHECK(p.queries > 0 && p.past >= 0 && p.heads > 0 && p.kv_heads > 0 && p.head_dim > 0 && p.window >= 0,
               "attention decode: bad params n=", p.queries, " p0=", p.past, " H=", p.heads, " KV=", p.kv_heads,
               " hd=", p.head_dim, " window=", p.window);
  ENGINE_CHECK(p.heads % p.kv_heads == 0, "attention decode: H=", p.heads, " is not a multiple of KV=", p.kv_heads);
  for (const TensorView& t : {out, k, v})
    ENGINE_CHECK(t.dtype == q.dtype, "attention decode: ", t.str(), " must have q's dtype ", q.str());
  const int64_t qcols = p.heads * p.head_dim, kvcols = p.kv_heads * p.head_dim;
  ENGINE_CHECK(q.numel() == p.queries * qcols && out.numel() == p.queries * qcols, "attention decode: q ", q.str(),
               " / out ", out.str(), " must hold n=", p.queries, " x H*hd=", qcols);
  ENGINE_CHECK(k.numel() == v.numel() && k.cols() == kvcols && k.rows() >= p.past + p.queries,
               "attention decode: cache k ", k.str(), " / v ", v.str(), " must be (cap >= p0+n=",
               p.past + p.queries, ", KV*hd=", kvcols, ")");
}

namespace cpu {

void attention_decode_forward(TensorView out, TensorView q, TensorView k, TensorView v,
                              const AttentionDecodeParams& p) {
  attention_decode_check(out, q, k, v, p);
  const DType dt = q.dtype;
  const int64_t H = p.heads, hd = p.head_dim, g = H / p.kv_heads, qcols = H * hd, kvcols = p.kv_heads * hd;
  auto r = [dt](double x) { return engine::round_to(dt, x); };
  std::vector<double> x(static_cast<size_t>(p.past + p.queries)), qv(static_cast<size_t>(hd));
  for (int64_t t = 0; t < p.queries; ++t) {
    const int64_t i = p.past + t, lo = p.window > 0 ? std::max<int64_t>(0, i - p.window + 1) : 0;
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kvo = (h / g) * hd;  // this head's columns in the cache rows
      for (int64_t d = 0; d < hd; ++d) qv[size_t(d)] = engine::load_f64(q.data, dt, t * qcols + h * hd + d);
      double mx = -INFINITY;
      for (int64_t j = lo; j <= i; ++j) {
        double s = 0;
        for (int64_t d = 0; d < hd; ++d) s += qv[size_t(d)] * engine::load_f64(k.data, dt, j * kvcols + kvo + d);
        double xj = r(r(s) * double(p.scale));
        if (p.softcap > 0.f) xj = r(r(std::tanh(r(xj / double(p.softcap)))) * double(p.softcap));
        x[size_t(j)] = xj;
        mx = std::max(mx, xj);
      }
      double sum = 0;
      for (int64_t j = lo; j <= i; ++j) sum += (x[size_t(j)] = std::exp(x[size_t(j)] - mx));
      for (int64_t j = lo; j <= i; ++j) x[size_t(j)] = r(x[size_t(j)] / sum);
      for (int64_t d = 0; d < hd; ++d) {
        double acc = 0;
        for (int64_t j = lo; j <= i; ++j) acc += x[size_t(j)] * engine::load_f64(v.data, dt, j * kvcols + kvo + d);
        engine::store_f64(out.data, dt, t * qcols + h * hd + d, acc);
      }
    }
  }
}

}  // namespace cpu
}  // namespace ops
