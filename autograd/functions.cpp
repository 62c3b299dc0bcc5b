// autograd/functions.cpp: forward calls and backward closures. Each closure's capture list is exactly the
// tensors its backward reads (Vars) plus the gradient handles it writes (GradRefs).
#include "autograd/functions.h"

#include <algorithm>

#include "ops/elementwise.h"
#include "ops/lora_branch.h"
#include "ops/lora_down.h"
#include "ops/lora_up.h"
#include "ops/matmul.h"

namespace autograd {

Var embedding(Tape& tape, const Var& ids, const Var& table, float scale, DType out_dtype) {
  Engine& eng = tape.engine();
  const ops::EmbeddingParams p{ids.numel(), table.cols(), table.rows(), scale};
  Var out = tape.output({p.tokens, p.dim}, out_dtype, "embedding", tape.any_requires_grad({table}));
  ops::embedding_forward(out.t(), ids.t(), table.t(), p, eng);
  if (out.requires_grad()) {
    GradRef dtable = table, dout = out;
    tape.record("embedding", {out}, [ids, dtable, dout, p](BackwardCtx& g) {  // saved: ids
      ops::embedding_backward(g.grad(dtable), g.grad(dout), ids.t(), p, g.engine());
      g.mode(dtable);
    });
  }
  return out;
}

Var rmsnorm(Tape& tape, const Var& x, const Var& w, float eps) {
  Engine& eng = tape.engine();
  const ops::RmsNormParams p{x.rows(), x.cols(), eps};
  const bool rg = tape.any_requires_grad({x, w});
  Var y = tape.output(x.shape(), x.dtype(), "rmsnorm", rg);
  Tensor rstd = eng.empty({p.rows}, DType::kF32);
  ops::rmsnorm_forward(y.t(), rstd, x.t(), w.t(), p, eng);
  if (rg) {
    GradRef dy = y;
    tape.record("rmsnorm", {y}, [x, w, rstd, dy, p](BackwardCtx& g) {  // saved: x, w, rstd
      const TensorView dx = g.grad(x);
      const Accum mode = g.mode(x);
      const TensorView dw = g.grad(w);
      if (dw.defined()) g.mode(w);
      if (dx.defined()) {
        ops::rmsnorm_backward(dx, mode, dw, g.grad(dy), x.t(), w.t(), rstd, p, g.engine());
      } else if (dw.defined()) {  // only the weight trains: dx goes to a scratch buffer
        Tensor scratch = g.engine().empty(x.shape(), x.dtype());
        ops::rmsnorm_backward(scratch, Accum::kSet, dw, g.grad(dy), x.t(), w.t(), rstd, p, g.engine());
      }
    });
  }
  return y;
}

Var linear(Tape& tape, const Var& x, const Var& w) {
  Engine& eng = tape.engine();
  const int64_t n = x.rows(), in = x.cols(), out_f = w.rows();
  ENGINE_CHECK(w.cols() == in, "linear: x ", x.t().str(), " vs weight ", w.t().str());
  const bool rg = tape.any_requires_grad({x, w});
  Var y = tape.output({n, out_f}, x.dtype(), "linear", rg);
  ops::MatmulParams p;
  p.m = n; p.n = out_f; p.k = in; p.trans_b = true;
  ops::matmul(y.t(), x.t(), w.t(), p, eng);
  if (rg) {
    // Saved: x only when W trains (for dW), W only when x needs dx.
    Var xs = w.requires_grad() ? x : Var(), ws = x.requires_grad() ? w : Var();
    GradRef dx_ref = x, dw_ref = w, dy_ref = y;
    tape.record("linear", {y}, [xs, ws, dx_ref, dw_ref, dy_ref, n, in, out_f](BackwardCtx& g) {
      const TensorView dy = g.grad(dy_ref);
      if (g.needs(dx_ref)) {  // dx (n, in) = dy (n, out) @ W (out, in)
        ops::MatmulParams p;
        p.m = n; p.n = in; p.k = out_f;
        p.beta = g.mode(dx_ref) == Accum::kAdd ? 1.f : 0.f;
        ops::matmul(g.grad(dx_ref), dy, ws.t(), p, g.engine());
      }
      if (g.needs(dw_ref)) {  // dW (out, in) += dy^T (out, n) @ x (n, in)
        ops::MatmulParams p;
        p.m = out_f; p.n = in; p.k = n; p.trans_a = true;
        p.beta = g.mode(dw_ref) == Accum::kAdd ? 1.f : 0.f;
        ops::matmul(g.grad(dw_ref), dy, xs.t(), p, g.engine());
      }
    });
  }
  return y;
}

namespace {
// The base weight of a single linear as a dense (out, in) view: the dense weight itself, or NF4 dequantized by its
// stage.
TensorView base_weight(const FrozenLinear& b, DType dtype) {
  if (b.dense.defined()) return b.dense;
  ENGINE_CHECK(b.nf4.packed.defined() && b.stage != nullptr && b.stage->dtype() == dtype,
               "lora_linear: an NF4 base needs a DequantStage of x's dtype ", engine::dtype_name(dtype));
  b.stage->begin({b});
  return b.stage->weight(0);
}
ops::LoraDownParams lora_down_params(const LoraBranch& l, int64_t n, int64_t in) {
  ops::LoraDownParams p;
  p.n = n; p.in = in; p.r = l.A.shape[0]; p.p = l.dropout;
  p.seed = l.seed; p.stream = l.stream; p.offset = l.offset;
  return p;
}
// The fused CUDA kernels' f32 partial sums (elems from ops::lora_*_workspace_elems); the CPU references need none.
Tensor fused_workspace(const TensorView& like, int64_t elems, Engine& eng) {
  if (like.device != engine::Device::kCUDA) return Tensor();
  return eng.empty({elems}, DType::kF32);
}
}  // namespace

DequantStage::~DequantStage() {
  if (!pending_) return;
  try {
    eng_.join(1);
  } catch (...) {  // the device is gone: nothing to wait for
  }
}

bool DequantStage::fits(const std::vector<FrozenLinear>& group) const {
  int64_t total = 0;
  for (const FrozenLinear& b : group) {
    if (b.dense.defined() || b.stage != this) return false;
    total += b.out * b.in;
  }
  return total <= ws_.numel();
}

std::vector<size_t> DequantStage::slots(const std::vector<FrozenLinear>& group) const {
  std::vector<size_t> at;
  for (const FrozenLinear& b : group) {
    const auto it = std::find(resident_.begin(), resident_.end(), b.nf4.packed.data);
    if (it == resident_.end()) return {};
    at.push_back(size_t(it - resident_.begin()));
  }
  return at;
}

TensorView DequantStage::slice(size_t g) const {
  int64_t off = 0;
  for (size_t h = 0; h < g; ++h) off += group_[h].out * group_[h].in;
  TensorView w = ws_;
  w.data = static_cast<char*>(w.data) + size_t(off) * engine::dtype_size(w.dtype);
  w.shape = {group_[g].out, group_[g].in};
  return w;
}

void DequantStage::join() {
  if (!pending_) return;
  eng_.join(1);
  pending_ = false;
}

void DequantStage::prefetch(const std::vector<FrozenLinear>& group) {
  if (!eng_.is_cuda() || group.empty() || !fits(group) || !slots(group).empty()) return;
  group_ = group;
  resident_.clear();
  for (const FrozenLinear& b : group) resident_.push_back(b.nf4.packed.data);
  eng_.fork(1);  // after the compute stream's work so far: the workspace's earlier readers are done
  for (size_t g = 0; g < group.size(); ++g) ops::cuda::nf4_dequantize(slice(g), group[g].nf4, eng_.side_stream(1));
  pending_ = true;
  member0_ = sequential_ = false;
}

void DequantStage::begin(const std::vector<FrozenLinear>& group) {
  ENGINE_CHECK(!group.empty(), "DequantStage::begin: an empty group");
  slot_ = slots(group);  // resident (prefetched, or from the last use), in whatever slices
  sequential_ = false;
  if (!slot_.empty()) return;  // member0_ holds if slice 0 is still due
  join();  // a hint that turned out wrong may still be writing the workspace
  group_ = group;
  resident_.clear();
  for (size_t g = 0; g < group.size(); ++g) slot_.push_back(g);
  member0_ = false;
  sequential_ = !fits(group);
  if (sequential_) return;
  for (const FrozenLinear& b : group) resident_.push_back(b.nf4.packed.data);
  member0_ = true;
  if (eng_.is_cuda() && group.size() > 1) {  // members 1.. beside member 0's dequantize and GEMM
    eng_.fork(1);
    for (size_t g = 1; g < group.size(); ++g) ops::cuda::nf4_dequantize(slice(g), group[g].nf4, eng_.side_stream(1));
    pending_ = true;
  } else {
    for (size_t g = 1; g < group.size(); ++g) ops::nf4_dequantize(slice(g), group[g].nf4, eng_);
  }
}

TensorView DequantStage::weight(size_t g) {
  ENGINE_CHECK(g < slot_.size(), "DequantStage::weight: member ", g, " of a group of ", slot_.size());
  const size_t k = slot_[g];
  const FrozenLinear& b = group_[k];
  ENGINE_CHECK(ws_.defined() && ws_.numel() >= b.out * b.in,
               "lora_linear: the NF4 workspace ", ws_.str(), " must hold ", b.out * b.in, " elements");
  if (sequential_) {
    TensorView w = ws_;
    w.shape = {b.out, b.in};
    ops::nf4_dequantize(w, b.nf4, eng_);
    resident_.clear();
    return w;
  }
  if (k == 0 && member0_) {  // the other slices may still be on side stream 1: no join yet
    ops::nf4_dequantize(slice(0), b.nf4, eng_);
    member0_ = false;
    return slice(0);
  }
  join();
  return slice(k);
}

bool lora_fuses_down(int64_t in, int64_t r, int64_t max_rank) { return r <= max_rank && ops::lora_down_fusable(in, r); }
bool lora_fuses_up(int64_t out, int64_t r, int64_t max_rank) { return r <= max_rank && ops::lora_up_fusable(out, r); }

// The fused kernels move 8-element vectors, so lora_linear also checks ops::vec8_aligned: adapter views sit at
// their offsets in one flat bank, and an odd r*in misaligns the later ones. Both allocators align bases to
// >= 64 bytes, so the check gives the same answer on CPU and CUDA and both backends take the same path.

namespace {
// One linear layer with no branch or an unfused one (the GEMM path, or the fused kernels that are not one
// pass: r = 8, or a down-projection whose rank the up-projection does not take).
Var lora_linear_single(Tape& tape, const Var& x, const FrozenLinear& base, const LoraBranch* lora) {
  Engine& eng = tape.engine();
  const int64_t n = x.rows(), in = base.in, out_f = base.out;
  ENGINE_CHECK(x.cols() == in, "lora_linear: x ", x.t().str(), " vs base (", out_f, ", ", in, ")");
  const DType dt = x.dtype();
  const bool rg = tape.recording() && (x.requires_grad() || lora != nullptr);
  Var y = tape.output({n, out_f}, dt, "lora_linear", rg);
  ops::MatmulParams p;
  p.m = n; p.n = out_f; p.k = in; p.trans_b = true;
  ops::matmul(y.t(), x.t(), base_weight(base, dt), p, eng);
  Tensor ac, bc, t;  // A and B in x's dtype; t = dropout(x) A^T (n, r)
  if (lora != nullptr) {
    const int64_t r = lora->A.shape[0];
    ENGINE_CHECK(lora->Ac.dtype == dt && lora->Bc.dtype == dt && lora->Ac.shape == lora->A.shape &&
                     lora->Bc.shape == lora->B.shape && lora->Ac.defined() && lora->Bc.defined(),
                 "lora_linear: the compute copies of A and B must have A's and B's shapes and x's dtype");
    ac = Tensor(lora->Ac, nullptr);
    bc = Tensor(lora->Bc, nullptr);
    t = eng.empty({n, r}, dt);
    const bool fuse_down = lora_fuses_down(in, r, lora->fuse_max_rank) && ops::vec8_aligned({x.t(), ac});
    const bool fuse_up = lora_fuses_up(out_f, r, lora->fuse_max_rank) && ops::vec8_aligned({y.t(), bc});
    if (fuse_down) {
      // dropout fused into lora_A: no dropout(x) buffer
      ops::lora_down_forward(t, x.t(), ac, lora_down_params(*lora, n, in), eng);
    } else {
      Tensor xa_buf;
      TensorView xa = x.t();
      if (lora->dropout > 0.f) {
        xa_buf = eng.empty(x.shape(), dt);
        ops::dropout_forward(xa_buf, x.t(), {x.numel(), lora->dropout, lora->seed, lora->stream, lora->offset}, eng);
        xa = xa_buf;
      }
      ops::MatmulParams pa;
      pa.m = n; pa.n = r; pa.k = in; pa.trans_b = true;
      ops::matmul(t, xa, ac, pa, eng);
    }
    if (fuse_up) {  // y += s t B^T, one pass
      ops::lora_up_forward(y.t(), t, bc, {n, out_f, r, lora->scaling}, eng);
    } else {
      ops::MatmulParams pb;
      pb.m = n; pb.n = out_f; pb.k = r; pb.trans_b = true; pb.alpha = lora->scaling; pb.beta = 1.f;
      ops::matmul(y.t(), t, bc, pb, eng);
    }
  }
  if (rg) {
    const FrozenLinear b = base;
    const bool has_lora = lora != nullptr;
    const LoraBranch lb = has_lora ? *lora : LoraBranch{};
    Var xs = has_lora ? x : Var();  // x is needed only to regenerate dropout(x) for dA
    GradRef dx_ref = x, dy_ref = y;
    tape.record("lora_linear", {y}, [b, has_lora, lb, xs, ac, bc, t, dx_ref, dy_ref, n, in, out_f, dt](BackwardCtx& g) {
      Engine& e = g.engine();
      const TensorView dy = g.grad(dy_ref);
      const bool want_dx = g.needs(dx_ref);
      if (want_dx) {  // dx (n, in) = dy (n, out) @ W (out, in): W dequantized again (SPEC.md §1.8)
        ops::MatmulParams p;
        p.m = n; p.n = in; p.k = out_f;
        p.beta = g.mode(dx_ref) == Accum::kAdd ? 1.f : 0.f;
        ops::matmul(g.grad(dx_ref), dy, base_weight(b, dt), p, e);
      }
      if (!has_lora) return;
      const int64_t r = lb.A.shape[0];
      Tensor dt_buf = e.empty({n, r}, dt);  // d t = scaling * dy @ B (n, r)
      if (lora_fuses_up(out_f, r, lb.fuse_max_rank) && ops::vec8_aligned({dy, bc})) {  // dt, dB: one pass over dy
        const Tensor ws = fused_workspace(dy, ops::lora_up_workspace_elems(n, out_f, r), e);
        ops::lora_up_backward(dt_buf, lb.dB, dy, t, bc, ws, {n, out_f, r, lb.scaling}, e);
      } else {
        ops::MatmulParams p;  // dB (out, r) += scaling * dy^T (out, n) @ t (n, r)
        p.m = out_f; p.n = r; p.k = n; p.trans_a = true; p.alpha = lb.scaling; p.beta = 1.f;
        ops::matmul(lb.dB, dy, t, p, e);
        ops::MatmulParams q;
        q.m = n; q.n = r; q.k = out_f; q.alpha = lb.scaling;
        ops::matmul(dt_buf, dy, bc, q, e);
      }
      const TensorView dxv = want_dx ? g.grad(dx_ref) : TensorView{};
      if (lora_fuses_down(in, r, lb.fuse_max_rank) && ops::vec8_aligned({xs.t(), ac, dxv})) {  // dA, dx: one pass
        const ops::LoraDownParams lp = lora_down_params(lb, n, in);
        ops::lora_down_backward(lb.dA, dxv, Accum::kAdd, dt_buf, xs.t(), ac,
                                fused_workspace(xs.t(), ops::lora_down_workspace_elems(n, in, r), e), lp, e);
        return;
      }
      Tensor xa_buf;
      TensorView xa = xs.t();
      const ops::DropoutParams dp{xs.numel(), lb.dropout, lb.seed, lb.stream, lb.offset};
      if (lb.dropout > 0.f) {
        xa_buf = e.empty(xs.shape(), dt);
        ops::dropout_forward(xa_buf, xs.t(), dp, e);
        xa = xa_buf;
      }
      {  // dA (r, in) += dt^T (r, n) @ dropout(x) (n, in)
        ops::MatmulParams p;
        p.m = r; p.n = in; p.k = n; p.trans_a = true; p.beta = 1.f;
        ops::matmul(lb.dA, dt_buf, xa, p, e);
      }
      if (want_dx) {  // dx += dropout_backward(dt @ A)
        Tensor dxa = e.empty(xs.shape(), dt);
        ops::MatmulParams p;
        p.m = n; p.n = in; p.k = r;
        ops::matmul(dxa, dt_buf, ac, p, e);
        if (lb.dropout > 0.f) ops::dropout_backward(g.grad(dx_ref), Accum::kAdd, dxa, dp, e);
        else ops::accumulate(g.grad(dx_ref), dxa, 1.f, Accum::kAdd, e);
      }
    });
  }
  return y;
}
// A group's dense base weights in member order: the dense weights, or the stage's.
class GroupWeights {
 public:
  GroupWeights(const std::vector<FrozenLinear>& bases, DType dtype) : bases_(bases) {
    stage_ = bases.empty() || bases[0].dense.defined() ? nullptr : bases[0].stage;
    for (const FrozenLinear& b : bases)
      ENGINE_CHECK(b.dense.defined() ? stage_ == nullptr
                                     : stage_ != nullptr && b.stage == stage_ && stage_->dtype() == dtype,
                   "lora_linear_group: members must all be dense or all NF4 with one DequantStage of x's dtype");
    if (stage_ != nullptr) stage_->begin(bases);
  }
  TensorView get(size_t g) { return stage_ ? stage_->weight(g) : bases_[g].dense; }

 private:
  const std::vector<FrozenLinear>& bases_;
  DequantStage* stage_ = nullptr;
};

void prefetch(const std::vector<FrozenLinear>& group) {
  if (!group.empty() && !group[0].dense.defined() && group[0].stage != nullptr) group[0].stage->prefetch(group);
}

// The group's branches go through ops::lora_branch when every member has one that fuses in one pass, with one
// rank, dropout key and dtype, and aligned views; otherwise each member is its own lora_linear_single.
bool branches_group(const Var& x, const std::vector<FrozenLinear>& bases, const std::vector<const LoraBranch*>& loras) {
  const LoraBranch* l0 = loras[0];
  if (l0 == nullptr) return false;
  const int64_t r = l0->A.shape[0];
  for (size_t g = 0; g < loras.size(); ++g) {
    const LoraBranch* l = loras[g];
    if (l == nullptr || l->A.shape[0] != r || l->dropout != l0->dropout || l->seed != l0->seed ||
        l->offset != l0->offset)
      return false;
    if (r > l->fuse_max_rank || !ops::lora_branch_fusable(bases[g].in, bases[g].out, r)) return false;
    if (l->Ac.dtype != x.dtype() || l->Bc.dtype != x.dtype() || !ops::vec8_aligned({x.t(), l->Ac, l->Bc})) return false;
  }
  return true;
}

}  // namespace

std::vector<Var> lora_linear_group(Tape& tape, const Var& x, const std::vector<FrozenLinear>& bases,
                                   const std::vector<const LoraBranch*>& loras, const std::vector<FrozenLinear>& next,
                                   const std::vector<FrozenLinear>& prev) {
  ENGINE_CHECK(!bases.empty() && bases.size() == loras.size() && int(bases.size()) <= ops::kLoraMaxGroup,
               "lora_linear_group: 1 to ", ops::kLoraMaxGroup, " members with one branch slot each, got ",
               bases.size(), " bases and ", loras.size(), " branches");
  const size_t G = bases.size();
  std::vector<Var> ys;
  if (!branches_group(x, bases, loras)) {
    for (size_t g = 0; g < G; ++g) ys.push_back(lora_linear_single(tape, x, bases[g], loras[g]));
    prefetch(next);
    return ys;
  }
  Engine& eng = tape.engine();
  const int64_t n = x.rows(), in = x.cols(), r = loras[0]->A.shape[0];
  const DType dt = x.dtype();
  const bool rg = tape.recording();
  std::vector<ops::LoraBranchMember> members(G);
  std::vector<Tensor> keep;  // t: saved for backward
  for (size_t g = 0; g < G; ++g) {
    const FrozenLinear& b = bases[g];
    const LoraBranch& l = *loras[g];
    ENGINE_CHECK(in == b.in, "lora_linear: x ", x.t().str(), " vs base (", b.out, ", ", b.in, ")");
    ENGINE_CHECK(l.Ac.shape == l.A.shape && l.Bc.shape == l.B.shape,
                 "lora_linear: the compute copies of A and B must have A's and B's shapes and x's dtype");
    ys.push_back(tape.output({n, b.out}, dt, "lora_linear", rg));
    Tensor t = eng.empty({n, r}, dt);
    keep.push_back(t);
    ops::LoraBranchMember& m = members[g];
    m.a = l.Ac; m.b = l.Bc; m.y = ys[g].t(); m.t = t; m.da = l.dA; m.db = l.dB;
    m.out = b.out; m.scaling = l.scaling; m.stream = l.stream;
  }
  // y = x W^T (W dequantized into the shared workspace) beside dropout + lora_A, then y += s t B^T
  GroupWeights ws(bases, dt);
  auto base = [&] {
    for (size_t g = 0; g < G; ++g) {
      ops::MatmulParams p;
      p.m = n; p.n = bases[g].out; p.k = in; p.trans_b = true;
      ops::matmul(ys[g].t(), x.t(), ws.get(g), p, eng);
    }
  };
  const ops::LoraDownParams lp = lora_down_params(*loras[0], n, in);
  ops::lora_branch_forward(x.t(), members, lp, eng, base);
  prefetch(next);
  if (!rg) return ys;
  for (auto& m : members) m.y = TensorView{};  // the outputs are not read in backward
  std::vector<GradRef> douts(ys.begin(), ys.end());
  GradRef dx_ref = x;
  tape.record("lora_linear", douts, [bases, prev, members, keep, x, dx_ref, douts, lp, n, in, dt](BackwardCtx& g) {
    Engine& e = g.engine();
    const bool want_dx = g.needs(dx_ref);
    std::vector<ops::LoraBranchMember> ms = members;
    for (size_t i = 0; i < ms.size(); ++i) ms[i].dy = g.grad(douts[i]);
    const TensorView dxv = want_dx ? g.grad(dx_ref) : TensorView{};
    // dx (n, in) (= then +=) dy (n, out) @ W (out, in), W dequantized again (SPEC.md §1.8), while lora_up's
    // pass over the same dy runs beside it; then the branches add to dx.
    auto base = [&] {
      if (!want_dx) return;
      GroupWeights ws(bases, dt);
      for (size_t i = 0; i < ms.size(); ++i) {
        ops::MatmulParams p;
        p.m = n; p.n = in; p.k = bases[i].out;
        p.beta = g.mode(dx_ref) == Accum::kAdd ? 1.f : 0.f;
        ops::matmul(dxv, ms[i].dy, ws.get(i), p, e);
      }
    };
    ops::lora_branch_backward(dxv, Accum::kAdd, x.t(), ms, lp, e, base);
    prefetch(prev);
  });
  return ys;
}

Var lora_linear(Tape& tape, const Var& x, const FrozenLinear& base, const LoraBranch* lora) {
  return lora_linear_group(tape, x, {base}, {lora})[0];
}

Var add(Tape& tape, const Var& a, const Var& b) {
  const bool rg = tape.any_requires_grad({a, b});
  Var y = tape.output(a.shape(), a.dtype(), "add", rg);
  ops::add(y.t(), a.t(), b.t(), tape.engine());
  if (rg) {
    GradRef da = a, db = b, dy = y;
    tape.record("add", {y}, [da, db, dy](BackwardCtx& g) {  // saves nothing
      // d a = d y: a's first contribution takes dy's buffer (no copy); b gets a copy (or is added to).
      if (g.needs(da) && !g.pass(dy, da)) ops::accumulate(g.grad(da), g.grad(dy), 1.f, g.mode(da), g.engine());
      if (g.needs(db)) ops::accumulate(g.grad(db), g.grad(dy), 1.f, g.mode(db), g.engine());
    });
  }
  return y;
}

ResidualNorm residual_rmsnorm(Tape& tape, const Var& h, const Var& o, const Var& w_branch, const Var& w_next,
                              float eps) {
  const bool next = w_next.defined();
  const bool fuses = !w_branch.requires_grad() && !(next && w_next.requires_grad()) && h.dtype() == o.dtype() &&
                     (!o.value().view().is_cuda() ||
                      (ops::residual_rmsnorm_fusable(o.cols()) && ops::vec8_aligned({h.t(), o.t()})));
  if (!fuses) {
    Var sum = add(tape, h, rmsnorm(tape, o, w_branch, eps));
    return {sum, next ? rmsnorm(tape, sum, w_next, eps) : Var()};
  }
  Engine& eng = tape.engine();
  const ops::RmsNormParams p{o.rows(), o.cols(), eps};
  const bool rg = tape.any_requires_grad({h, o});
  Var sum = tape.output(o.shape(), o.dtype(), "residual", rg);
  Var normed = next ? tape.output(o.shape(), o.dtype(), "rmsnorm", rg) : Var();
  Tensor rstd1 = eng.empty({p.rows}, DType::kF32);
  Tensor rstd2 = next ? eng.empty({p.rows}, DType::kF32) : Tensor();
  const TensorView wn = next ? w_next.t() : TensorView{};
  ops::residual_rmsnorm_forward(sum.t(), next ? normed.t() : TensorView{}, rstd1, rstd2.view(), h.t(), o.t(),
                                w_branch.t(), wn, p, eng);
  if (rg) {
    // Saved: o, the norm weights, rstd1; with the entry norm also sum and rstd2 (its backward reads them).
    const Var ss = next ? sum : Var();
    GradRef dh = h, d_o = o, ds = sum, dy = next ? normed.gref() : GradRef();
    std::vector<GradRef> outs{sum};
    if (next) outs.push_back(normed);
    tape.record("residual_rmsnorm", outs, [o, ss, w_branch, w_next, rstd1, rstd2, dh, d_o, ds, dy, next,
                                           p](BackwardCtx& g) {
      // Without the entry norm, d h = d sum: h's first contribution takes sum's buffer.
      const bool passed = !next && g.pass(ds, dh);
      const TensorView dhv = g.needs(dh) && !passed ? g.grad(dh) : TensorView{};
      const Accum dh_mode = dhv.defined() ? g.mode(dh) : Accum::kSet;
      if (!g.needs(d_o) && !dhv.defined()) return;
      // o needs no gradient (it came from constants) but h does: the kernel's d o goes to a scratch buffer.
      Tensor scratch;
      if (!g.needs(d_o)) scratch = g.engine().empty(o.shape(), o.dtype());
      const TensorView dov = scratch.defined() ? scratch.view() : g.grad(d_o);
      const Accum do_mode = scratch.defined() ? Accum::kSet : g.mode(d_o);
      ops::residual_rmsnorm_backward(dhv, dh_mode, dov, do_mode, g.grad(ds), next ? g.grad(dy) : TensorView{},
                                     next ? ss.t() : TensorView{}, o.t(), w_branch.t(),
                                     next ? w_next.t() : TensorView{}, rstd1, rstd2.view(), p, g.engine());
    });
  }
  return {sum, normed};
}

Var scale(Tape& tape, const Var& x, float alpha) {
  const bool rg = tape.any_requires_grad({x});
  Var y = tape.output(x.shape(), x.dtype(), "scale", rg);
  ops::scale(y.t(), x.t(), alpha, tape.engine());
  if (rg) {
    GradRef dx = x, dy = y;
    tape.record("scale", {y}, [dx, dy, alpha](BackwardCtx& g) {
      ops::accumulate(g.grad(dx), g.grad(dy), alpha, g.mode(dx), g.engine());
    });
  }
  return y;
}

Var rope(Tape& tape, const Var& x, const Var& positions, int64_t heads, int64_t head_dim, float theta) {
  const ops::RopeParams p{x.rows(), heads, head_dim, theta};
  const bool rg = tape.any_requires_grad({x});
  Var y = tape.output(x.shape(), x.dtype(), "rope", rg);
  ops::rope_forward(y.t(), x.t(), positions.t(), p, tape.engine());
  if (rg) {
    GradRef dx = x, dy = y;
    tape.record("rope", {y}, [positions, dx, dy, p](BackwardCtx& g) {  // saved: positions
      ops::rope_backward(g.grad(dx), g.mode(dx), g.grad(dy), positions.t(), p, g.engine());
    });
  }
  return y;
}

Var attention(Tape& tape, const Var& q, const Var& k, const Var& v, const Var& positions, const Var& key_mask,
              const ops::AttentionParams& p, float rope_theta, bool keep_probs) {
  Engine& eng = tape.engine();
  const bool rg = tape.any_requires_grad({q, k, v});
  const ops::AttentionRopeParams rp{p.batch, p.seq, p.heads, p.kv_heads, p.head_dim, rope_theta};
  const DType dt = q.dtype();
  // Head-major and RoPE'd, as the attention reads them; these, not q/k/v, are what the backward keeps.
  Tensor qh = eng.empty({p.batch, p.heads, p.seq, p.head_dim}, dt), kh = eng.empty({p.batch, p.kv_heads, p.seq, p.head_dim}, dt),
         vh = eng.empty({p.batch, p.kv_heads, p.seq, p.head_dim}, dt);
  ops::attention_rope_forward(qh, kh, vh, q.t(), k.t(), v.t(), positions.t(), rp, eng);
  Var out = tape.output(q.shape(), dt, "attention", rg);
  Tensor probs = eng.empty({p.batch, p.heads, p.seq, p.seq}, dt);
  const TensorView mask = key_mask.defined() ? key_mask.t() : TensorView{};
  ops::attention_forward_head_major(out.t(), probs, qh, kh, vh, mask, p, eng);
  if (rg) {
    if (!keep_probs) probs = Tensor();  // freed now; the backward recomputes it
    GradRef dq = q, dk = k, dv = v, dout = out;
    tape.record("attention", {out}, [qh, kh, vh, positions, key_mask, probs, dq, dk, dv, dout, p,
                                     rp](BackwardCtx& g) {
      Engine& e = g.engine();
      Tensor dqh = e.empty(qh.shape(), qh.dtype()), dkh = e.empty(kh.shape(), kh.dtype()),
             dvh = e.empty(vh.shape(), vh.dtype());
      const TensorView mask = key_mask.defined() ? key_mask.t() : TensorView{};
      ops::attention_backward_head_major(dqh, dkh, dvh, g.grad(dout), qh, kh, vh, probs, mask, p, e);
      ops::AttentionRopeGrads d;
      if (g.needs(dq)) { d.dq = g.grad(dq); d.dq_mode = g.mode(dq); }
      if (g.needs(dk)) { d.dk = g.grad(dk); d.dk_mode = g.mode(dk); }
      if (g.needs(dv)) { d.dv = g.grad(dv); d.dv_mode = g.mode(dv); }
      ops::attention_rope_backward(d, dqh, dkh, dvh, positions.t(), rp, e);
    });
  }
  return out;
}

Var geglu(Tape& tape, const Var& gate, const Var& up) {
  const ops::GegluParams p{gate.rows(), gate.cols(), -1};
  const bool rg = tape.any_requires_grad({gate, up});
  Var y = tape.output(gate.shape(), gate.dtype(), "geglu", rg);
  ops::geglu_forward(y.t(), gate.t(), up.t(), p, tape.engine());
  if (rg) {
    GradRef dgate = gate, dup = up, dy = y;
    tape.record("geglu", {y}, [gate, up, dgate, dup, dy, p](BackwardCtx& g) {  // saved: gate, up
      Engine& e = g.engine();
      Tensor sg, su;  // the op writes both gradients; scratch for one that needs none
      TensorView tg = g.grad(dgate), tu = g.grad(dup);
      if (!tg.defined()) { sg = e.empty(gate.shape(), gate.dtype()); tg = sg; }
      if (!tu.defined()) { su = e.empty(up.shape(), up.dtype()); tu = su; }
      const Accum mg = g.needs(dgate) ? g.mode(dgate) : Accum::kSet;
      const Accum mu = g.needs(dup) ? g.mode(dup) : Accum::kSet;
      ops::geglu_backward(tg, mg, tu, mu, g.grad(dy), gate.t(), up.t(), p, e);
    });
  }
  return y;
}

Var dropout(Tape& tape, const Var& x, float p, uint64_t seed, uint64_t stream, uint64_t offset) {
  if (p <= 0.f) return x;
  const ops::DropoutParams dp{x.numel(), p, seed, stream, offset};
  const bool rg = tape.any_requires_grad({x});
  Var y = tape.output(x.shape(), x.dtype(), "dropout", rg);
  ops::dropout_forward(y.t(), x.t(), dp, tape.engine());
  if (rg) {
    GradRef dx = x, dy = y;
    tape.record("dropout", {y}, [dx, dy, dp](BackwardCtx& g) {  // the mask is regenerated: saves nothing
      ops::dropout_backward(g.grad(dx), g.mode(dx), g.grad(dy), dp, g.engine());
    });
  }
  return y;
}

Var checkpoint(Tape& tape, const Var& x, std::function<Var(Tape&, const Var&)> fn) {
  Engine& eng = tape.engine();
  Var y_val;
  {
    Tape fwd(eng, /*recording=*/false);
    y_val = fn(fwd, x);
  }
  if (!tape.recording()) return y_val;
  Var y = tape.leaf(y_val.value(), "checkpoint");  // the recomputing node below produces its gradient
  GradRef dx = x, dy = y;
  tape.record("checkpoint", {y}, [x, dx, dy, fn](BackwardCtx& g) {  // saved: the layer input only
    Engine& e = g.engine();
    Tape inner(e);
    Var xi = inner.leaf(x.value(), "checkpoint.x");
    Var yi = fn(inner, xi);
    inner.backward(yi, g.grad(dy));
    if (g.needs(dx)) {
      const TensorView gx = g.grad(xi);
      ops::accumulate(g.grad(dx), gx, 1.f, g.mode(dx), e);
    }
  });
  return y;
}

}  // namespace autograd
