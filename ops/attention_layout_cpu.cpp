// ops/attention_layout_cpu.cpp: reference permutes (plain loops, element by element through load/store_f64).
#include "ops/attention_layout.h"

namespace ops {

void attention_layout_check(TensorView dst, TensorView src, const AttentionLayoutParams& p) {
  check_float(src, "attention layout src");
  ENGINE_CHECK(dst.dtype == src.dtype, "attention layout: dst ", dst.str(), " must have src's dtype ", src.str());
  ENGINE_CHECK(p.batch >= 0 && p.seq >= 0 && p.heads >= 0 && p.head_dim >= 0, "attention layout: negative size B=",
               p.batch, " T=", p.seq, " heads=", p.heads, " hd=", p.head_dim);
  const int64_t n = p.batch * p.seq * p.heads * p.head_dim;
  ENGINE_CHECK(src.numel() == n && dst.numel() == n, "attention layout: src ", src.str(), " / dst ", dst.str(),
               " do not hold B=", p.batch, " x T=", p.seq, " x heads=", p.heads, " x hd=", p.head_dim);
}

namespace cpu {
namespace {
// Copies every head row; `head_major_dst` picks the direction.
void permute(TensorView dst, TensorView src, const AttentionLayoutParams& p, bool head_major_dst) {
  attention_layout_check(dst, src, p);
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t t = 0; t < p.seq; ++t)
      for (int64_t h = 0; h < p.heads; ++h) {
        const int64_t tok = ((b * p.seq + t) * p.heads + h) * p.head_dim;   // (B,T,heads,hd)
        const int64_t head = ((b * p.heads + h) * p.seq + t) * p.head_dim;  // (B,heads,T,hd)
        const int64_t d0 = head_major_dst ? head : tok, s0 = head_major_dst ? tok : head;
        for (int64_t d = 0; d < p.head_dim; ++d)
          engine::store_f64(dst.data, dst.dtype, d0 + d, engine::load_f64(src.data, src.dtype, s0 + d));
      }
}
}  // namespace

void attention_to_head_major(TensorView dst, TensorView src, const AttentionLayoutParams& p) {
  permute(dst, src, p, true);
}
void attention_to_token_major(TensorView dst, TensorView src, const AttentionLayoutParams& p) {
  permute(dst, src, p, false);
}
}  // namespace cpu
}  // namespace ops
