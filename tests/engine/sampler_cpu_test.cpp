// tests/engine/sampler_cpu_test.cpp: per-epoch shuffle, group_by_length (SPEC.md §6.5), rank sharding of the
// global batch, and the update-step count (SPEC.md §5.8).
#include "engine/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <set>

#include "engine/check.h"
#include "engine/philox.h"

namespace {

using engine::Error;
using engine::Sampler;

std::vector<int64_t> random_lengths(int64_t n, uint64_t seed, int64_t max_len = 512) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i) out.push_back(3 + int64_t(engine::philox_u32(seed, 0, uint64_t(i)) % uint32_t(max_len - 2)));
  return out;
}

std::vector<int64_t> flatten(const std::vector<std::vector<int64_t>>& batches) {
  std::vector<int64_t> out;
  for (const auto& b : batches) out.insert(out.end(), b.begin(), b.end());
  return out;
}

bool is_permutation_of_n(std::vector<int64_t> v, int64_t n) {
  std::sort(v.begin(), v.end());
  std::vector<int64_t> want(static_cast<size_t>(n));
  std::iota(want.begin(), want.end(), 0);
  return v == want;
}

TEST(SamplerTest, DeterministicPermutationPerEpoch) {
  const auto lengths = random_lengths(100, 1);
  const Sampler a(lengths, 2, 4, 1, 0, false, 42), b(lengths, 2, 4, 1, 0, false, 42);
  EXPECT_EQ(a.epoch(0), b.epoch(0));
  EXPECT_EQ(a.epoch(3), b.epoch(3));
  for (int64_t e = 0; e < 3; ++e) {
    const auto batches = a.epoch(e);
    EXPECT_EQ(int64_t(batches.size()), a.micro_batches_per_epoch());
    for (const auto& mb : batches) EXPECT_EQ(mb.size(), 2u);
    EXPECT_TRUE(is_permutation_of_n(flatten(batches), 100));
  }
  EXPECT_NE(a.global_order(0), a.global_order(1));  // reshuffled every epoch
  EXPECT_NE(a.global_order(0), Sampler(lengths, 2, 4, 1, 0, false, 43).global_order(0));  // seed matters
  std::vector<int64_t> identity(100);
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_NE(a.global_order(0), identity);
}

// Pins the Philox Fisher-Yates stream: a change here changes every run's data order.
TEST(SamplerTest, PinnedOrder) {
  const Sampler s(std::vector<int64_t>(10, 1), 1, 1, 1, 0, false, 42);
  EXPECT_EQ(s.global_order(0), (std::vector<int64_t>{6, 9, 3, 7, 0, 4, 5, 2, 1, 8}));
  EXPECT_EQ(s.global_order(1), (std::vector<int64_t>{9, 6, 7, 4, 1, 8, 5, 2, 3, 0}));
}

TEST(SamplerTest, SingleExampleAndShortEpochs) {
  const Sampler s({7}, 4, 4, 1, 0, true, 1);
  EXPECT_EQ(s.epoch(0), (std::vector<std::vector<int64_t>>{{0}}));
  EXPECT_EQ(s.num_update_steps_per_epoch(), 1);
}

// get_length_grouped_indices: mega-batches of mult * G of the shuffled order, each sorted by length
// descending (ties keep shuffled order), the longest example first.
void check_grouping(int64_t n, int64_t b, int64_t ga, int64_t w, int64_t want_mult) {
  SCOPED_TRACE(::testing::Message() << "n=" << n << " b=" << b << " ga=" << ga << " w=" << w);
  const auto lengths = random_lengths(n, 7, 40);  // short range: many ties
  const Sampler plain(lengths, b, ga, w, 0, false, 5), grouped(lengths, b, ga, w, 0, true, 5);
  const auto p = plain.global_order(2), g = grouped.global_order(2);
  ASSERT_TRUE(is_permutation_of_n(g, n));
  const int64_t mega = want_mult * b * w * ga;
  const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
  EXPECT_EQ(lengths[size_t(g[0])], longest);
  // Undo the head swap, then every mega-batch is the stable descending sort of the plain chunk.
  auto u = g;
  int64_t swapped = 0;  // the chunk that held the longest head before the swap
  for (int64_t s = 0; s < n; s += mega) {
    if (std::find(p.begin() + s, p.begin() + std::min(s + mega, n), g[0]) != p.begin() + std::min(s + mega, n)) {
      swapped = s;
      break;
    }
  }
  std::swap(u[0], u[size_t(swapped)]);
  for (int64_t s = 0; s < n; s += mega) {
    std::vector<int64_t> want(p.begin() + s, p.begin() + std::min(s + mega, n));
    std::stable_sort(want.begin(), want.end(), [&](int64_t x, int64_t y) { return lengths[size_t(x)] > lengths[size_t(y)]; });
    EXPECT_EQ(std::vector<int64_t>(u.begin() + s, u.begin() + std::min(s + mega, n)), want) << "mega-batch at " << s;
  }
  // The sort must actually change something, or this test could not fail.
  EXPECT_NE(g, p);
}

TEST(SamplerTest, GroupByLengthMegaBatches) {
  check_grouping(1000, 2, 4, 1, 31);  // mult = 1000 / (8 * 4) = 31
  check_grouping(5000, 1, 4, 1, 50);  // capped at 50
  check_grouping(10, 2, 4, 1, 1);     // 10 / 32 = 0 -> 1
  check_grouping(997, 1, 2, 3, 41);   // world size counts in the global batch: G = 6, 997 / 24 = 41
}

// W ranks with batch b see exactly the micro-batches of one rank with batch W * b; disjoint; drop_last=false.
void check_sharding(int64_t n, int64_t b, int64_t ga, int64_t w, bool group) {
  SCOPED_TRACE(::testing::Message() << "n=" << n << " b=" << b << " w=" << w << " group=" << group);
  const auto lengths = random_lengths(n, 3);
  const Sampler single(lengths, b * w, ga, 1, 0, group, 9);
  const auto want = single.epoch(1);
  std::vector<std::vector<std::vector<int64_t>>> per_rank;
  for (int64_t r = 0; r < w; ++r) {
    const Sampler s(lengths, b, ga, w, r, group, 9);
    per_rank.push_back(s.epoch(1));
    EXPECT_EQ(per_rank.back().size(), want.size()) << "rank " << r;
    EXPECT_EQ(s.micro_batches_per_epoch(), single.micro_batches_per_epoch());
    EXPECT_EQ(s.num_update_steps_per_epoch(), single.num_update_steps_per_epoch());
  }
  std::vector<int64_t> all;
  for (size_t j = 0; j < want.size(); ++j) {
    std::vector<int64_t> joined;
    for (int64_t r = 0; r < w; ++r) {
      const auto& mb = per_rank[size_t(r)][j];
      EXPECT_LE(int64_t(mb.size()), b);
      if (j + 1 < want.size()) {
        EXPECT_EQ(int64_t(mb.size()), b) << "only the last micro-batch may be short";
      }
      joined.insert(joined.end(), mb.begin(), mb.end());
    }
    EXPECT_EQ(joined, want[j]) << "micro-batch " << j;
    all.insert(all.end(), joined.begin(), joined.end());
  }
  EXPECT_TRUE(is_permutation_of_n(all, n));  // disjoint and complete
}

TEST(SamplerTest, RankShardingMatchesOneRankGlobalBatch) {
  for (bool group : {false, true}) {
    check_sharding(53, 2, 2, 3, group);   // last global micro-batch 5 = 2 + 2 + 1
    check_sharding(48, 2, 4, 4, group);   // exact
    check_sharding(200, 1, 4, 8, group);
  }
}

TEST(SamplerTest, LastMicroBatchSplitsEvenlyAndMayBeEmpty) {
  const auto lengths = random_lengths(13, 4);  // 13 = 2 * 6 + 1
  std::vector<size_t> last_sizes;
  for (int64_t r = 0; r < 3; ++r) {
    const auto batches = Sampler(lengths, 2, 1, 3, r, false, 0).epoch(0);
    ASSERT_EQ(batches.size(), 3u);
    last_sizes.push_back(batches.back().size());
  }
  EXPECT_EQ(last_sizes, (std::vector<size_t>{1, 0, 0}));
  const auto lengths2 = random_lengths(17, 4);  // 17 = 12 + 5 over 3 ranks of 4: 2, 2, 1
  last_sizes.clear();
  for (int64_t r = 0; r < 3; ++r) last_sizes.push_back(Sampler(lengths2, 4, 1, 3, r, false, 0).epoch(0).back().size());
  EXPECT_EQ(last_sizes, (std::vector<size_t>{2, 2, 1}));
}

TEST(SamplerTest, UpdateStepsPerEpochFormula) {
  struct Case { int64_t n, b, ga, w, micro, updates; };
  // len = ceil(n / (b * w)); updates = max(len // GA + int(len % GA > 0), 1)
  for (const Case c : {Case{10, 1, 4, 1, 10, 3}, Case{8, 1, 4, 1, 8, 2}, Case{1, 4, 4, 1, 1, 1},
                       Case{9, 2, 4, 1, 5, 2}, Case{9, 2, 2, 2, 3, 2}, Case{1000, 1, 4, 1, 1000, 250},
                       Case{1001, 1, 4, 1, 1001, 251}, Case{100, 3, 1, 1, 34, 34}, Case{64, 4, 2, 8, 2, 1}}) {
    const Sampler s(random_lengths(c.n, 1), c.b, c.ga, c.w, 0, false, 0);
    EXPECT_EQ(s.micro_batches_per_epoch(), c.micro) << c.n << " " << c.b << " " << c.ga << " " << c.w;
    EXPECT_EQ(s.num_update_steps_per_epoch(), c.updates) << c.n << " " << c.b << " " << c.ga << " " << c.w;
    EXPECT_EQ(int64_t(s.epoch(0).size()), c.micro);
  }
}

TEST(SamplerTest, BadArgumentsThrow) {
  const std::vector<int64_t> l = {5, 6, 7};
  EXPECT_THROW(Sampler({}, 1, 1, 1, 0, false, 0), Error);
  EXPECT_THROW(Sampler(l, 0, 1, 1, 0, false, 0), Error);
  EXPECT_THROW(Sampler(l, 1, 0, 1, 0, false, 0), Error);
  EXPECT_THROW(Sampler(l, 1, 1, 0, 0, false, 0), Error);
  EXPECT_THROW(Sampler(l, 1, 1, 2, 2, false, 0), Error);
  EXPECT_THROW(Sampler(l, 1, 1, 2, -1, false, 0), Error);
  EXPECT_THROW(Sampler(l, 1, 1, 1, 0, false, 0).epoch(-1), Error);
}

TEST(SamplerTest, GlobalEpochIsTheRanksSlicesInRankOrder) {
  const auto lengths = random_lengths(31, 4);
  for (const bool by_length : {false, true})
    for (int64_t W : {1, 2, 4}) {
      const Sampler g(lengths, 3, 2, W, 0, by_length, 8);
      const auto global = g.global_epoch(2);
      ASSERT_EQ(int64_t(global.size()), g.micro_batches_per_epoch());
      EXPECT_EQ(flatten(global), g.global_order(2));
      for (size_t j = 0; j < global.size(); ++j) {
        std::vector<int64_t> joined;
        for (int64_t r = 0; r < W; ++r) {
          const auto mine = Sampler(lengths, 3, 2, W, r, by_length, 8).epoch(2);
          joined.insert(joined.end(), mine[j].begin(), mine[j].end());
        }
        EXPECT_EQ(joined, global[j]) << "W=" << W << " micro-batch " << j;
      }
    }
}

}  // namespace
