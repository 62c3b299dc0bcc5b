#include "autograd/tape.h"

#include "ops/elementwise.h"

namespace autograd {

TensorView BackwardCtx::grad(const GradRef& r) {
  GradSlot* s = r.slot();
  if (s == nullptr || !s->requires_grad) return TensorView{};
  if (!s->grad.defined()) s->grad = tape_.eng_.empty(s->shape, s->dtype);
  // Parameters' grads may be stored with another shape (flat buffers): present them in the Var's shape.
  return s->grad.view().reshape(s->shape);
}

Accum BackwardCtx::mode(const GradRef& r) {
  GradSlot* s = r.slot();
  if (s == nullptr) return Accum::kSet;
  if (s->is_param) return Accum::kAdd;
  const Accum m = s->written ? Accum::kAdd : Accum::kSet;
  s->written = true;
  return m;
}

bool BackwardCtx::pass(const GradRef& from, const GradRef& to) {
  GradSlot *f = from.slot(), *t = to.slot();
  if (f == nullptr || t == nullptr || f == t || !f->grad.defined() || !t->requires_grad || t->is_param ||
      t->written || t->grad.defined() || t->dtype != f->dtype || t->shape.numel() != f->shape.numel())
    return false;
  t->grad = f->grad;  // shared; the tape drops `from`'s share once the node has run
  t->written = true;
  return true;
}

Engine& BackwardCtx::engine() { return tape_.eng_; }

namespace {
std::shared_ptr<GradSlot> make_slot(const Tensor& v, bool requires_grad, std::string name) {
  auto s = std::make_shared<GradSlot>();
  s->shape = v.shape();
  s->dtype = v.dtype();
  s->requires_grad = requires_grad;
  s->name = std::move(name);
  return s;
}
}  // namespace

Var Tape::constant(Tensor value, std::string name) {
  auto s = make_slot(value, false, std::move(name));
  return Var(std::move(value), std::move(s));
}

Var Tape::leaf(Tensor value, std::string name) {
  auto s = make_slot(value, recording_, std::move(name));
  return Var(std::move(value), std::move(s));
}

Var Tape::param(Tensor value, Tensor grad, std::string name) {
  ENGINE_CHECK(grad.numel() == value.numel(), "param ", name, ": grad ", grad.view().str(), " vs value ",
               value.view().str());
  auto s = make_slot(value, recording_, std::move(name));
  s->is_param = true;
  s->dtype = grad.dtype();
  s->grad = std::move(grad);
  return Var(std::move(value), std::move(s));
}

Var Tape::output(Shape shape, DType dtype, std::string name, bool requires_grad) {
  Tensor v = eng_.empty(shape, dtype);
  auto s = make_slot(v, requires_grad && recording_, std::move(name));
  return Var(std::move(v), std::move(s));
}

bool Tape::any_requires_grad(std::initializer_list<GradRef> vs) const {
  if (!recording_) return false;
  for (const GradRef& v : vs) if (v.requires_grad()) return true;
  return false;
}

void Tape::record(const char* name, std::initializer_list<GradRef> outputs, BackwardFn fn) {
  record(name, std::vector<GradRef>(outputs), std::move(fn));
}

void Tape::record(const char* name, std::vector<GradRef> outputs, BackwardFn fn) {
  if (!recording_) return;
  nodes_.push_back(Node{name, std::move(outputs), std::move(fn)});
}

void Tape::backward(const GradRef& root, TensorView seed) {
  BackwardCtx g(*this);
  TensorView d = g.grad(root);
  ENGINE_CHECK(d.defined(), "backward: the root needs no gradient");
  ops::accumulate(d, seed, 1.f, g.mode(root), eng_);
  for (size_t i = nodes_.size(); i-- > 0;) {
    Node& n = nodes_[i];
    // Outputs that received no gradient contribute zero: skip the node when none did, zero-fill the
    // others' buffers when some did.
    bool any = false;
    for (const GradRef& o : n.outputs) any = any || (o.slot() && o.slot()->written);
    if (any) {
      for (const GradRef& o : n.outputs) {
        if (!o.requires_grad() || o.slot()->written) continue;
        eng_.zero(g.grad(o));
        o.slot()->written = true;
      }
      n.fn(g);
    }
    n.fn = nullptr;  // frees the saved tensors
    for (const GradRef& o : n.outputs)
      if (o.slot() && !o.slot()->is_param) o.slot()->grad = Tensor();  // consumed: free it
  }
  nodes_.clear();
}

}  // namespace autograd
