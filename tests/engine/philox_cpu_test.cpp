// tests/engine/philox_cpu_test.cpp (label cpu): the dropout randoms of engine/philox.h. The 16-bit halves
// tile each counter's 128 bits without overlap, dropout_keep8<SH> (the kernels' 8-at-a-time path) equals
// 8 per-element draws for every shift, and the keep rate is 1 - p.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "engine/philox.h"

namespace {

TEST(PhiloxCpu, HalvesTileTheCounter) {
  const engine::Philox4 r = engine::philox4x32_10(5, 3, 9);
  for (int k = 0; k < 8; ++k) {
    const uint32_t w = r.v[k / 2];
    EXPECT_EQ(engine::philox_half(r, k), k % 2 ? w >> 16 : w & 0xFFFFu) << k;
    EXPECT_EQ(engine::philox_u16(5, 9, 3 * 8 + uint64_t(k)), engine::philox_half(r, k)) << k;
  }
}

template <int SH>
void check_keep8(uint64_t base) {
  const uint64_t first = base * 8 + SH;
  const unsigned bits = engine::dropout_keep8<SH>(77, 4, first, 0.3f);
  for (int k = 0; k < 8; ++k)
    EXPECT_EQ((bits >> k) & 1u, unsigned(engine::dropout_keep(engine::philox_u16(77, 4, first + k), 0.3f)))
        << "SH " << SH << " element " << k;
}

TEST(PhiloxCpu, Keep8MatchesPerElementDrawsForEveryShift) {
  for (uint64_t base : {0ull, 1ull, 12345ull, (1ull << 40) + 3}) {
    check_keep8<0>(base); check_keep8<1>(base); check_keep8<2>(base); check_keep8<3>(base);
    check_keep8<4>(base); check_keep8<5>(base); check_keep8<6>(base); check_keep8<7>(base);
  }
}

TEST(PhiloxCpu, KeepRateAndThresholds) {
  EXPECT_TRUE(engine::dropout_keep(0, 0.0f));       // p = 0 keeps everything
  EXPECT_FALSE(engine::dropout_keep(6553, 0.1f));   // 6553 / 65536 < 0.1
  EXPECT_TRUE(engine::dropout_keep(6554, 0.1f));    // drop rate ceil(6553.6) / 65536
  EXPECT_TRUE(engine::dropout_keep(65535, 0.99f));
  const int n = 200000;
  int kept = 0;
  std::set<uint32_t> distinct;
  for (int i = 0; i < n; ++i) {
    const uint32_t h = engine::philox_u16(1, 2, uint64_t(i));
    kept += engine::dropout_keep(h, 0.1f);
    distinct.insert(h);
  }
  EXPECT_NEAR(double(kept) / n, 0.9, 5 * std::sqrt(0.09 / n));
  EXPECT_GT(distinct.size(), 60000u);  // all 16 bits vary
}

}  // namespace
