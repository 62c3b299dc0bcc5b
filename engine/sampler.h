// engine/sampler.h: the order of micro-batches in each epoch, for one of N data-parallel ranks.
//   Global order: a permutation of all examples, drawn per epoch from (seed, epoch) by Fisher-Yates on
//   engine/philox.h, so it is the same on every machine. With group_by_length it is transformers'
//   get_length_grouped_indices (SPEC.md §6.5) applied to the GLOBAL batch G = per_device_batch * world_size *
//   grad_accum: mega-batches of mega_batch_mult * G (mega_batch_mult = min(n / (4G), 50), at least 1) of
//   the permutation, each stably sorted by length descending, then the longest mega-batch head swapped
//   into position 0. The permutation itself is ours, not torch.randperm: export the order from Python for
//   sample-order parity (SPEC.md §5.9).
//   Sharding: global micro-batch j is order[j*W*b, (j+1)*W*b) and rank r takes its r-th slice of b, so one
//   GPU with batch W*b sees exactly the micro-batches of W GPUs with batch b (the same global order).
//   drop_last = false: the last global micro-batch of m < W*b examples is split as evenly as possible in
//   rank order (the first m % W ranks get one more); when m < W some ranks get an EMPTY final micro-batch
//   and must still join the gradient all-reduce with zero tokens. Every rank has the same count of
//   micro-batches. Tests: tests/engine/sampler_cpu_test.cpp.
#pragma once
#include <cstdint>
#include <vector>

namespace engine {

class Sampler {
 public:
  // lengths: tokens per example (ChatDataset::lengths()); throws engine::Error on an empty dataset or
  // bad sizes (batch, accumulation, world size < 1; rank outside [0, world_size)).
  Sampler(std::vector<int64_t> lengths, int64_t per_device_batch, int64_t grad_accum, int64_t world_size,
          int64_t rank, bool group_by_length, uint64_t seed);

  // The permutation of all example indices for epoch e (the same on every rank).
  std::vector<int64_t> global_order(int64_t e) const;
  // This rank's micro-batches of example indices for epoch e, in order. Optimizer step s uses
  // micro-batches [s*grad_accum, (s+1)*grad_accum); the last step of an epoch may have fewer.
  std::vector<std::vector<int64_t>> epoch(int64_t e) const;
  // The GLOBAL micro-batches of epoch e: micro-batch j holds every rank's slice of it, in rank order (what
  // one rank with batch world_size * per_device_batch would run). The trainer counts a window's label
  // tokens over all ranks from it, with no communication.
  std::vector<std::vector<int64_t>> global_epoch(int64_t e) const;

  // ceil(n / (per_device_batch * world_size)), the same on every rank. For world_size = 1 this is
  // transformers' len_dataloader = ceil(n / per_device_bs); for W > 1 it equals accelerate's per-process
  // ceil(ceil(n / b) / W) with even_batches, without the wrapped-around duplicate examples.
  int64_t micro_batches_per_epoch() const;
  // max(len // GA + int(len % GA > 0), 1) with len = micro_batches_per_epoch() (SPEC.md §5.8).
  int64_t num_update_steps_per_epoch() const;
  int64_t size() const { return int64_t(lengths_.size()); }

 private:
  std::vector<int64_t> lengths_;
  int64_t batch_, grad_accum_, world_, rank_;
  bool group_by_length_;
  uint64_t seed_;
};

}  // namespace engine
