// ops/lora_branch.cpp: the grouped LoRA branch as calls of ops/lora_down.h and ops/lora_up.h: per member on
// the CPU (the specification), grouped launches on CUDA.
#include "ops/lora_branch.h"

namespace ops {
namespace {

void check_members(TensorView x, const std::vector<LoraBranchMember>& members, const LoraDownParams& p,
                   const char* what) {
  ENGINE_CHECK(!members.empty() && int(members.size()) <= kLoraMaxGroup, what, ": 1 to ", kLoraMaxGroup,
               " members, got ", members.size());
  for (const LoraBranchMember& m : members)
    ENGINE_CHECK(lora_branch_fusable(p.in, m.out, p.r), what, ": needs in % 8 == 0, out % 8 == 0 and r = 4 or 16, ",
                 "got in=", p.in, " out=", m.out, " r=", p.r, " (x ", x.str(), ")");
}

LoraDownParams member_params(const LoraDownParams& p, const LoraBranchMember& m) {
  LoraDownParams q = p;
  q.stream = m.stream;
  return q;
}

}  // namespace

void lora_branch_forward(TensorView x, const std::vector<LoraBranchMember>& members, const LoraDownParams& p,
                         Engine& eng, const std::function<void()>& overlap) {
  check_members(x, members, p, "lora_branch_forward");
  if (!on_cuda({x})) {
    if (overlap) overlap();
    for (const LoraBranchMember& m : members) {
      const LoraUpEpilogue up{m.y, m.b, m.out, m.scaling};
      cpu::lora_down_forward(m.t, x, m.a, member_params(p, m), &up);
    }
    return;
  }
  const int count = int(members.size());
  std::vector<LoraDownMember> dm(members.size());
  std::vector<LoraUpEpilogue> up(members.size());
  std::vector<TensorView> ts(members.size());
  for (size_t g = 0; g < members.size(); ++g) {
    const LoraBranchMember& m = members[g];
    dm[g].a = m.a;
    dm[g].t = ts[g] = m.t;
    dm[g].stream = m.stream;
    up[g] = LoraUpEpilogue{m.y, m.b, m.out, m.scaling};
  }
  if (!overlap) {  // the whole branch in one launch: each block adds its rows' s t B^T right after summing t
    for (size_t g = 0; g < members.size(); ++g) dm[g].up = up[g];
    cuda::lora_down_forward_group(x, dm.data(), count, p, eng.stream());
    return;
  }
  engine::SideScope side(eng, 0);  // t = dropout(x) A^T beside the caller's base products; x, a, t outlive it
  cuda::lora_down_forward_group(x, dm.data(), count, p, side.stream());
  overlap();
  side.join();
  cuda::lora_up_forward_group(up.data(), ts.data(), count, p.n, p.r, eng.stream());
}

void lora_branch_backward(TensorView dx, Accum dx_mode, TensorView x, const std::vector<LoraBranchMember>& members,
                          const LoraDownParams& p, Engine& eng, const std::function<void()>& overlap) {
  check_members(x, members, p, "lora_branch_backward");
  const int count = int(members.size());
  if (!on_cuda({x})) {
    if (overlap) overlap();
    for (int g = 0; g < count; ++g) {
      const LoraBranchMember& m = members[size_t(g)];
      engine::Tensor dt = eng.empty_host({p.n, p.r}, x.dtype);
      cpu::lora_up_backward(dt, m.db, m.dy, m.t, m.b, {p.n, m.out, p.r, m.scaling});
      cpu::lora_down_backward(m.da, dx, g == 0 ? dx_mode : Accum::kAdd, dt, x, m.a, member_params(p, m));
    }
    return;
  }
  // One f32 workspace: each member's lora_up partials, then lora_down's slabs for all members.
  std::vector<int64_t> up_elems(static_cast<size_t>(count));
  int64_t total = 0;
  for (int g = 0; g < count; ++g) total += up_elems[size_t(g)] = lora_up_workspace_elems(p.n, members[size_t(g)].out, p.r);
  const int64_t down_elems = count * lora_down_workspace_elems(p.n, p.in, p.r);
  engine::Tensor ws = eng.empty({total + down_elems}, DType::kF32);
  std::vector<LoraUpPartials> up(static_cast<size_t>(count));
  std::vector<LoraDownMember> dm(static_cast<size_t>(count));
  int64_t off = 0;
  for (int g = 0; g < count; ++g) {
    const LoraBranchMember& m = members[size_t(g)];
    up[size_t(g)] = LoraUpPartials{m.dy, m.t, m.b, m.db, ws.view().slice_rows(off, off + up_elems[size_t(g)]), m.out, m.scaling};
    off += up_elems[size_t(g)];
    dm[size_t(g)].a = m.a;
    dm[size_t(g)].da = m.da;
    dm[size_t(g)].stream = m.stream;
    dm[size_t(g)].dt_from = &up[size_t(g)];
  }
  // lora_up's pass beside the caller's work; ws, dy, t and b stay allocated until the join
  engine::SideScope side(eng, 0);
  cuda::lora_up_backward_partials(up.data(), count, p.n, p.r, side.stream());
  if (overlap) overlap();
  side.join();
  cuda::lora_down_backward_group(dx, dx_mode, x, dm.data(), count, ws.view().slice_rows(off, off + down_elems), p, eng.stream());
}

}  // namespace ops
