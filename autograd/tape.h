// autograd/tape.h: a minimal tape (Wengert list) over engine tensors.
//   Each op in autograd/functions.h runs its forward at once and, if any input needs a gradient, records
//   a Node holding its backward closure. The closure's capture list IS the set of saved tensors: a Var
//   captured by value keeps its tensor alive; a GradRef (flashlight's withoutData()) reaches only the
//   gradient. Closures never capture [&] / [=]. A node's closure is destroyed right after it runs, which
//   frees what it saved. backward() walks nodes in reverse: program order is already topological.
// Gradient rules (ggml's add_or_set, llm.c's += for parameters):
//   - activation gradients: the first contribution SETS the buffer (Accum::kSet), later ones ADD. The
//     buffer is allocated at first use (or handed over by a pass-through node: BackwardCtx::pass) and freed
//     once the node that produced the Var has run.
//   - parameter gradients (Tape::param) live outside the tape and always ACCUMULATE, so micro-batches
//     add up until the optimizer zeroes them.
//   - constants (frozen weights, token ids) and Vars computed only from constants need no gradient: no
//     node is recorded for them and no gradient work is done.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "ops/common.h"

namespace autograd {

using engine::DType;
using engine::Engine;
using engine::Shape;
using engine::Tensor;
using engine::TensorView;
using ops::Accum;

struct GradSlot {
  Shape shape;
  DType dtype = DType::kF32;    // gradient dtype (activations: their own dtype; parameters: their grad's)
  Tensor grad;
  bool requires_grad = false;
  bool is_param = false;        // persistent, always +=, never freed by the tape
  bool written = false;         // activations: has the first contribution been made?
  std::string name;
};

// A handle to a Var's gradient that does not keep the Var's value alive.
class GradRef {
 public:
  GradRef() = default;
  explicit GradRef(std::shared_ptr<GradSlot> s) : s_(std::move(s)) {}
  bool requires_grad() const { return s_ && s_->requires_grad; }
  GradSlot* slot() const { return s_.get(); }

 private:
  std::shared_ptr<GradSlot> s_;
};

// A value on the tape plus its gradient slot. Cheap to copy; copies share both.
class Var {
 public:
  Var() = default;
  Var(Tensor value, std::shared_ptr<GradSlot> slot) : value_(std::move(value)), slot_(std::move(slot)) {}
  const Tensor& value() const { return value_; }
  TensorView t() const { return value_.view(); }
  const Shape& shape() const { return value_.shape(); }
  DType dtype() const { return value_.dtype(); }
  int64_t rows() const { return value_.view().rows(); }
  int64_t cols() const { return value_.view().cols(); }
  int64_t numel() const { return value_.numel(); }
  bool defined() const { return value_.defined(); }
  bool requires_grad() const { return slot_ && slot_->requires_grad; }
  const std::string& name() const { return slot_->name; }
  GradRef gref() const { return GradRef(slot_); }
  operator GradRef() const { return gref(); }  // NOLINT: a Var can be used wherever a gradient is meant

 private:
  Tensor value_;
  std::shared_ptr<GradSlot> slot_;
};

class Tape;

// What a backward closure sees: gradient buffers and their accumulation modes.
class BackwardCtx {
 public:
  explicit BackwardCtx(Tape& tape) : tape_(tape) {}
  bool needs(const GradRef& v) const { return v.requires_grad(); }
  // v's gradient buffer, allocated on first use; an undefined view when v needs no gradient.
  TensorView grad(const GradRef& v);
  // The mode for this contribution: kSet for the first one into an activation gradient, else kAdd.
  // Each call counts as one contribution.
  Accum mode(const GradRef& v);
  // Hands `from`'s gradient buffer to `to` when `to` has had no contribution yet (same shape and dtype, not a
  // parameter): `to`'s gradient becomes d(from) without a copy. Only for a node whose backward passes its
  // output's gradient through unchanged, and which writes nothing into `from` afterwards. True when handed.
  bool pass(const GradRef& from, const GradRef& to);
  Engine& engine();

 private:
  Tape& tape_;
};

using BackwardFn = std::function<void(BackwardCtx&)>;

class Tape {
 public:
  // recording = false: forward only (inference, or the first pass of a recomputed layer).
  explicit Tape(Engine& eng, bool recording = true) : eng_(eng), recording_(recording) {}
  Tape(const Tape&) = delete;
  Tape& operator=(const Tape&) = delete;

  Engine& engine() { return eng_; }
  bool recording() const { return recording_; }

  Var constant(Tensor value, std::string name = "const");
  // A leaf whose gradient the tape owns and keeps after backward (e.g. a recomputed layer's input).
  Var leaf(Tensor value, std::string name = "leaf");
  // A trainable parameter; `grad` is its persistent gradient buffer (same element count), +=.
  Var param(Tensor value, Tensor grad, std::string name);
  // A fresh, uninitialised op output; it needs a gradient iff `requires_grad` and the tape records.
  Var output(Shape shape, DType dtype, std::string name, bool requires_grad);
  bool any_requires_grad(std::initializer_list<GradRef> vs) const;

  // Appends a node (no-op when not recording). `outputs`: the gradients it consumes.
  void record(const char* name, std::initializer_list<GradRef> outputs, BackwardFn fn);
  void record(const char* name, std::vector<GradRef> outputs, BackwardFn fn);

  // Adds `seed` to d(root), then runs every node in reverse. The tape is empty afterwards.
  void backward(const GradRef& root, TensorView seed);
  // Drops every node (and what it saved) without running it.
  void clear() { nodes_.clear(); }
  size_t num_nodes() const { return nodes_.size(); }

 private:
  friend class BackwardCtx;
  struct Node {
    const char* name;
    std::vector<GradRef> outputs;
    BackwardFn fn;
  };
  Engine& eng_;
  bool recording_;
  std::vector<Node> nodes_;
};

}  // namespace autograd
