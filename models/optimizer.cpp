#include "models/optimizer.h"

#include <nlohmann/json.hpp>

#include "engine/safetensors.h"
#include "ops/adamw.h"
#include "ops/global_norm.h"

namespace models {

using engine::DType;
using engine::Tensor;

Optimizer::Optimizer(engine::Engine& eng, Tensor params, Tensor grads, const OptimizerConfig& cfg)
    : eng_(eng), params_(std::move(params)), grads_(std::move(grads)), cfg_(cfg) {
  const int64_t P = params_.numel();
  ENGINE_CHECK(params_.dtype() == DType::kF32 && grads_.dtype() == DType::kF32 && grads_.numel() == P,
               "optimizer: params ", params_.view().str(), " and grads ", grads_.view().str(), " must be f32 alike");
  if (cfg_.paged && eng.is_cuda()) {
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    paged_ = std::make_unique<engine::ManagedBuffer>(size_t(2 * P) * sizeof(float), dev);
    engine::TensorView mv{paged_->data(), DType::kF32, {P}, engine::Device::kCUDA};
    m_ = Tensor(mv, nullptr);
    mv.data = static_cast<float*>(paged_->data()) + P;
    v_ = Tensor(mv, nullptr);
  } else {
    m_ = eng.empty({P}, DType::kF32);
    v_ = eng.empty({P}, DType::kF32);
  }
  eng.zero(m_);
  eng.zero(v_);
  sumsq_ = eng.empty({1}, DType::kF32);
  gscale_ = eng.empty({1}, DType::kF32);
  norm_ = eng.empty({1}, DType::kF32);
  found_inf_ = eng.empty({1}, DType::kI32);
  if (eng.is_cuda()) norm_ws_ = eng.empty({int64_t(ops::global_norm_workspace_bytes(P))}, DType::kU8);
  host_f_ = eng.empty_host({1}, DType::kF32);
  host_i_ = eng.empty_host({1}, DType::kI32);
  scaler_.enabled = cfg_.loss_scaling;
}

StepResult Optimizer::step(engine::StepTimer* timer) {
  if (timer) timer->mark(engine::StepMark::kOptimizerStart);
  StepResult r;
  const float S = scaler_.current();
  eng_.zero(sumsq_);
  ops::global_norm_sumsq(sumsq_, grads_, norm_ws_, eng_);
  ops::ClipParams cp;
  cp.max_norm = float(cfg_.max_grad_norm);
  cp.inv_loss_scale = float(1.0 / double(S));
  ops::clip_coefficient(gscale_, norm_, found_inf_, sumsq_, cp, eng_);
  r.lr = cfg_.lr * engine::lr_factor(cfg_.schedule, opt_steps_, cfg_.warmup_steps, cfg_.total_steps);
  if (paged_) paged_->prefetch_to_device(eng_.stream());
  ops::AdamWParams ap;
  ap.n = params_.numel();
  ap.lr = float(r.lr);
  ap.beta1 = float(cfg_.beta1);
  ap.beta2 = float(cfg_.beta2);
  ap.eps = float(cfg_.eps);
  ap.weight_decay = float(cfg_.weight_decay);
  ap.step = int(opt_steps_ + 1);
  ops::adamw_step(params_, m_, v_, grads_, gscale_, found_inf_, ap, eng_);
  eng_.zero(grads_);
  if (timer) timer->mark(engine::StepMark::kOptimizerEnd);
  eng_.copy(host_f_, norm_);
  eng_.copy(host_i_, found_inf_);
  eng_.synchronize();
  r.skipped = host_i_.ptr<int32_t>()[0] != 0;
  r.grad_norm = host_f_.ptr<float>()[0];
  if (!r.skipped) ++opt_steps_;
  scaler_.update(r.skipped);
  return r;
}

void Optimizer::evict_state() {
  if (paged_) paged_->evict_to_host(eng_.stream());
}

std::string Optimizer::state_json() const {
  nlohmann::json j = {{"opt_steps", opt_steps_}, {"loss_scale", scaler_.scale},
                      {"growth_tracker", scaler_.growth_tracker}, {"skipped_steps", scaler_.skipped_steps}};
  return j.dump();
}

void Optimizer::load_state_json(const std::string& text, const std::string& source) {
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    opt_steps_ = j.at("opt_steps");
    scaler_.scale = j.at("loss_scale");
    scaler_.growth_tracker = j.at("growth_tracker");
    scaler_.skipped_steps = j.at("skipped_steps");
  } catch (const std::exception& e) {
    throw engine::Error(source + ": optimizer state: " + e.what());
  }
}

void Optimizer::save(const std::string& dir) const {
  const int64_t P = params_.numel();
  Tensor hm = eng_.empty_host({P}, DType::kF32), hv = eng_.empty_host({P}, DType::kF32);
  eng_.copy(hm, m_);
  eng_.copy(hv, v_);
  eng_.synchronize();
  engine::write_safetensors(dir + "/optimizer.safetensors", {{"exp_avg", hm}, {"exp_avg_sq", hv}},
                            {{"state", state_json()}});
}

void Optimizer::load(const std::string& dir) {
  engine::SafetensorsFile f(dir + "/optimizer.safetensors");
  const int64_t P = params_.numel();
  for (auto [name, dst] : {std::pair<const char*, Tensor*>{"exp_avg", &m_}, {"exp_avg_sq", &v_}}) {
    const engine::TensorView src = f.view(name);
    ENGINE_CHECK(src.dtype == DType::kF32 && src.numel() == P, f.path(), ": tensor ", name, " is ", src.str(),
                 ", expected f32 (", P, ")");
    eng_.copy(*dst, src);
  }
  eng_.synchronize();
  auto it = f.metadata().find("state");
  ENGINE_CHECK(it != f.metadata().end(), f.path(), ": no \"state\" metadata (optimizer counters)");
  load_state_json(it->second, f.path());
}

}  // namespace models
