#include "engine/sampler.h"

#include <algorithm>
#include <numeric>

#include "engine/check.h"
#include "engine/philox.h"

namespace engine {
namespace {

constexpr uint64_t kShuffleStream = 0x73616d706c6572ull;  // "sampler": keeps these draws apart from dropout's

// Fisher-Yates; each swap index is unbiased (Lemire's multiply-and-reject on 32-bit Philox words).
std::vector<int64_t> permutation(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  const uint64_t stream = kShuffleStream + uint64_t(epoch);
  uint64_t draw = 0;
  for (int64_t i = n - 1; i > 0; --i) {
    const uint32_t range = uint32_t(i + 1);
    uint64_t m = uint64_t(philox_u32(seed, stream, draw++)) * range;
    if (uint32_t(m) < range) {
      const uint32_t reject_below = uint32_t(-range) % range;
      while (uint32_t(m) < reject_below) m = uint64_t(philox_u32(seed, stream, draw++)) * range;
    }
    std::swap(p[size_t(i)], p[size_t(m >> 32)]);
  }
  return p;
}

}  // namespace

Sampler::Sampler(std::vector<int64_t> lengths, int64_t per_device_batch, int64_t grad_accum, int64_t world_size,
                 int64_t rank, bool group_by_length, uint64_t seed)
    : lengths_(std::move(lengths)),
      batch_(per_device_batch),
      grad_accum_(grad_accum),
      world_(world_size),
      rank_(rank),
      group_by_length_(group_by_length),
      seed_(seed) {
  if (lengths_.empty()) throw Error("sampler: the dataset has no examples");
  if (lengths_.size() >= (size_t(1) << 32))
    throw Error(str_cat("sampler: ", lengths_.size(), " examples; at most 2^32 - 1 are supported"));
  if (batch_ < 1 || grad_accum_ < 1 || world_ < 1)
    throw Error(str_cat("sampler: per_device_batch=", batch_, ", grad_accum=", grad_accum_, ", world_size=", world_,
                        "; each must be at least 1"));
  if (rank_ < 0 || rank_ >= world_) throw Error(str_cat("sampler: rank ", rank_, " is outside [0, ", world_, ")"));
}

std::vector<int64_t> Sampler::global_order(int64_t e) const {
  if (e < 0) throw Error(str_cat("sampler: epoch ", e, " is negative"));
  const int64_t n = size();
  std::vector<int64_t> order = permutation(n, seed_, e);
  if (!group_by_length_) return order;
  const int64_t global = batch_ * world_ * grad_accum_;
  const int64_t mult = std::max<int64_t>(std::min<int64_t>(n / (global * 4), 50), 1);
  const int64_t mega = mult * global;
  int64_t longest = 0;  // start of the mega-batch whose head is the longest (the first such, as torch.argmax)
  for (int64_t s = 0; s < n; s += mega) {
    const auto b = order.begin() + s, end = order.begin() + std::min(s + mega, n);
    std::stable_sort(b, end, [&](int64_t x, int64_t y) { return lengths_[size_t(x)] > lengths_[size_t(y)]; });
    if (lengths_[size_t(*b)] > lengths_[size_t(order[size_t(longest)])]) longest = s;
  }
  std::swap(order[0], order[size_t(longest)]);
  return order;
}

std::vector<std::vector<int64_t>> Sampler::epoch(int64_t e) const {
  const std::vector<int64_t> order = global_order(e);
  const int64_t n = size(), global = batch_ * world_;
  std::vector<std::vector<int64_t>> out;
  out.reserve(size_t(micro_batches_per_epoch()));
  for (int64_t start = 0; start < n; start += global) {
    const int64_t m = std::min(global, n - start);  // == global except for the last micro-batch
    const int64_t base = m / world_, extra = m % world_;
    const int64_t begin = start + rank_ * base + std::min(rank_, extra);
    const int64_t count = base + (rank_ < extra ? 1 : 0);
    out.emplace_back(order.begin() + begin, order.begin() + begin + count);
  }
  return out;
}

std::vector<std::vector<int64_t>> Sampler::global_epoch(int64_t e) const {
  const std::vector<int64_t> order = global_order(e);
  const int64_t n = size(), global = batch_ * world_;
  std::vector<std::vector<int64_t>> out;
  out.reserve(size_t(micro_batches_per_epoch()));
  for (int64_t start = 0; start < n; start += global)
    out.emplace_back(order.begin() + start, order.begin() + std::min(start + global, n));
  return out;
}

int64_t Sampler::micro_batches_per_epoch() const {
  const int64_t global = batch_ * world_;
  return (size() + global - 1) / global;
}

int64_t Sampler::num_update_steps_per_epoch() const {
  const int64_t len = micro_batches_per_epoch();
  return std::max<int64_t>(len / grad_accum_ + (len % grad_accum_ > 0 ? 1 : 0), 1);
}

}  // namespace engine
