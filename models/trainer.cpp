#include "models/trainer.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "engine/chat_data.h"
#include "engine/comm.h"
#include "engine/rendezvous.h"
#include "engine/safetensors.h"
#include "engine/sampler.h"
#include "engine/schedule.h"
#include "engine/tensorboard.h"
#include "engine/tokenizer.h"
#include "models/gemma2.h"
#include "models/lora.h"
#include "models/optimizer.h"

namespace models {

using engine::DType;
using engine::Tensor;

namespace {

void mkdir_p(const std::string& path) {
  std::string cur;
  for (size_t i = 0; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '/') {
      if (!cur.empty() && ::mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST)
        throw engine::Error("cannot create folder " + cur + ": " + std::strerror(errno));
    }
    if (i < path.size()) cur += path[i];
  }
}

void remove_tree(const std::string& path) {
  DIR* d = ::opendir(path.c_str());
  if (d == nullptr) {
    ::unlink(path.c_str());
    return;
  }
  while (dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n == "." || n == "..") continue;
    remove_tree(path + "/" + n);
  }
  ::closedir(d);
  ::rmdir(path.c_str());
}

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& output_dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  DIR* d = ::opendir(output_dir.c_str());
  if (d == nullptr) return out;
  while (dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n.rfind("checkpoint-", 0) != 0) continue;
    char* end = nullptr;
    const long long step = std::strtoll(n.c_str() + 11, &end, 10);
    if (end && *end == '\0' && step >= 0) out.emplace_back(step, output_dir + "/" + n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

std::string fmt_duration(double s) {
  const long long t = (long long)std::llround(std::max(0.0, s));
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%02lld:%02lld:%02lld", t / 3600, (t / 60) % 60, t % 60);
  return buf;
}

// Where the loop stands (with the adapter and the optimizer state, what a checkpoint needs to continue
// exactly where the run stopped).
struct LoopState {
  int64_t global_step = 0;  // optimizer steps taken, skipped ones included (HF's global_step)
  int64_t epoch = 0;        // epoch of the next window
  int64_t window = 0;       // index of the next optimizer-step window within that epoch
  int64_t micro_step = 0;   // global micro-batches run so far: keys the dropout masks
};

// The data position in global terms (independent of the number of ranks): examples of the epoch consumed
// and the global batch (examples per optimizer step) that consumed them.
struct DataPosition {
  int64_t epoch_examples = -1;  // -1: a checkpoint from before data parallel (window is then exact)
  int64_t global_batch = 0;
};

nlohmann::json state_to_json(const LoopState& s, const DataPosition& p, int world) {
  return {{"global_step", s.global_step}, {"epoch", s.epoch},       {"window", s.window},
          {"micro_step", s.micro_step},   {"epoch_examples", p.epoch_examples},
          {"global_batch", p.global_batch}, {"world_size", world}};
}

LoopState state_from_json(const nlohmann::json& j, const std::string& path, DataPosition* pos) {
  LoopState s;
  try {
    s.global_step = j.at("global_step");
    s.epoch = j.at("epoch");
    s.window = j.at("window");
    s.micro_step = j.at("micro_step");
    if (j.contains("epoch_examples")) {
      pos->epoch_examples = j.at("epoch_examples");
      pos->global_batch = j.at("global_batch");
    }
  } catch (const std::exception& e) {
    throw engine::Error(path + ": missing or invalid field: " + e.what());
  }
  return s;
}

// The window index that continues after `pos` with this run's global batch G (a different number of GPUs
// or batch size): exact when G divides the examples consumed; group_by_length orders each epoch by G, so
// it needs the same G unless the epoch was finished.
int64_t resume_window(const DataPosition& pos, int64_t G, int64_t n, int64_t windows_per_epoch, bool by_length,
                      const std::string& path) {
  if (pos.epoch_examples >= n) return windows_per_epoch;  // the epoch was done: the loop starts the next one
  ENGINE_CHECK(!by_length || G == pos.global_batch, path, ": written with a global batch of ", pos.global_batch,
               " examples per step (per_device_train_batch_size x ranks x gradient_accumulation_steps), this run "
               "has ", G, "; group_by_length orders an epoch by the global batch, so resume mid-epoch with the same one");
  ENGINE_CHECK(pos.epoch_examples % G == 0, path, ": ", pos.epoch_examples,
               " examples of the epoch were consumed, not a multiple of this run's global batch ", G,
               " (per_device_train_batch_size x ranks x gradient_accumulation_steps); pick sizes whose product divides it");
  return pos.epoch_examples / G;
}

}  // namespace

TokenCounts count_tokens(const engine::ChatDataset& data, const std::vector<int64_t>& examples) {
  TokenCounts c;
  for (int64_t i : examples) {
    const engine::ChatExample& ex = data[i];
    c.tokens += int64_t(ex.ids.size());
    for (size_t t = 1; t < ex.labels.size(); ++t) c.labels += ex.labels[t] != engine::kIgnoreLabel;
  }
  return c;
}

std::string latest_checkpoint(const std::string& output_dir) {
  const auto cks = list_checkpoints(output_dir);
  return cks.empty() ? std::string() : cks.back().second;
}

Trainer::Trainer(const engine::TrainConfig& cfg, engine::Engine& eng, engine::DataParallel* dp)
    : cfg_(cfg), eng_(eng), dp_(dp), rank_(dp ? dp->rank() : 0), world_(dp ? dp->world_size() : 1) {
  ENGINE_CHECK(world_ == 1 || (eng.comm() != nullptr && eng.comm()->world_size() == world_), "trainer: rank ", rank_,
               " of ", world_, " but the engine has no communicator of that size (construct DataParallel first)");
}

TrainResult Trainer::run() {
  const engine::TrainConfig& c = cfg_;
  const engine::TrainingConfig& tc = c.training;
  const bool lead = rank_ == 0;
  auto say = [&](const std::string& s) {
    if (lead) std::printf("%s\n", s.c_str()), std::fflush(stdout);
  };
  say(eng_.describe());
  if (lead) {
    mkdir_p(tc.output_dir);
    c.save_yaml(tc.output_dir + "/train_config.yaml");
  }

  // ---- data -----------------------------------------------------------------------------------------
  const engine::Tokenizer tok = engine::Tokenizer::from_file(c.model.path + "/tokenizer.model");
  engine::ChatDataOptions dopt;
  dopt.path = c.data.path;
  dopt.max_seq_length = c.data.max_seq_length;
  dopt.chat_template = c.data.prompt_format;
  dopt.loss_on = engine::loss_on_from_name(c.data.loss_on);
  dopt.skip_bad_lines = c.data.skip_bad_lines;
  const engine::ChatDataset data = engine::ChatDataset::load(dopt, tok);
  say(data.summary());

  // ---- model and adapters --------------------------------------------------------------------------
  Gemma2Options mo;
  mo.compute_dtype = c.compute_dtype();
  mo.quantize_nf4 = c.quantization.load_in_4bit;
  mo.gradient_checkpointing = tc.gradient_checkpointing;
  mo.checkpoint_layers = tc.checkpoint_layers.value_or(-1);
  mo.recompute_attention_probs = tc.recompute_attention_probs;
  if (tc.checkpoint_layers) {  // named here; the model would only say "checkpoint_layers"
    const int64_t L = Gemma2Config::from_json_file(c.model.path + "/config.json").num_hidden_layers;
    ENGINE_CHECK(*tc.checkpoint_layers <= L, "training.checkpoint_layers: ", *tc.checkpoint_layers,
                 " exceeds the ", L, " layers of ", c.model.path, "/config.json");
  }
  const auto t_load = std::chrono::steady_clock::now();
  Gemma2Model model = Gemma2Model::load(c.model.path, eng_, mo);
  ENGINE_CHECK(tok.vocab_size() <= model.config().vocab_size, c.model.path, "/tokenizer.model has ",
               tok.vocab_size(), " pieces but the model's vocab_size is ", model.config().vocab_size);
  say(engine::str_cat("model: ", c.model.path, " (", model.config().num_hidden_layers, " layers, D=",
                      model.config().hidden_size, ", V=", model.config().vocab_size, "), ",
                      mo.quantize_nf4 ? "NF4 + double quant" : "dense", ", compute ",
                      engine::dtype_name(mo.compute_dtype), ", loaded in ",
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count(), " s"));
  LoraSpec ls;
  ls.r = c.lora.r;
  ls.alpha = c.lora.lora_alpha;
  ls.dropout = c.lora.lora_dropout;
  ls.use_rslora = c.lora.use_rslora;
  ls.targets = c.lora_targets();
  ls.init_seed = uint64_t(c.lora_init_seed());
  LoraAdapters lora(model.config(), ls, eng_);
  model.attach_lora(&lora, uint64_t(tc.seed));
  say(lora.trainable_summary(model.num_base_params()));
  if (mo.gradient_checkpointing || mo.recompute_attention_probs) {
    const int64_t L = model.config().num_hidden_layers, n = recomputed_layers(mo, L);
    say(engine::str_cat("memory: ", mo.gradient_checkpointing ? engine::str_cat(n, " of ", L, " layers recomputed") : "",
                        mo.gradient_checkpointing && mo.recompute_attention_probs ? ", " : "",
                        mo.recompute_attention_probs ? "attention probabilities recomputed in backward" : ""));
  }

  // ---- schedule ---------------------------------------------------------------------------------------
  const engine::Sampler sampler(data.lengths(), tc.per_device_train_batch_size, tc.gradient_accumulation_steps,
                                world_, rank_, tc.group_by_length, uint64_t(tc.seed));
  const int64_t per_epoch = sampler.num_update_steps_per_epoch();
  const int64_t total = tc.max_steps > 0 ? tc.max_steps : int64_t(std::ceil(tc.num_train_epochs * double(per_epoch)));
  const int64_t warmup = c.num_warmup_steps(total);
  OptimizerConfig oc;
  oc.lr = tc.learning_rate;
  oc.beta1 = tc.adam_beta1;
  oc.beta2 = tc.adam_beta2;
  oc.eps = tc.adam_epsilon;
  oc.weight_decay = tc.weight_decay;  // every LoRA tensor decays (SPEC.md §5.7)
  oc.max_grad_norm = tc.max_grad_norm;
  oc.schedule = engine::parse_lr_schedule(tc.lr_scheduler_type);
  oc.warmup_steps = warmup;
  oc.total_steps = total;
  oc.paged = tc.optim == "paged_adamw_32bit" && eng_.is_cuda();
  oc.loss_scaling = mo.compute_dtype == DType::kF16;
  Optimizer opt(eng_, lora.params(), lora.grads(), oc);
  LoopState st;
  say(engine::str_cat("training: ", total, " optimizer steps (", per_epoch, " per epoch), batch ",
                      tc.per_device_train_batch_size, " x grad accum ", tc.gradient_accumulation_steps, " x ",
                      world_, " rank(s), warmup ", warmup, ", ", tc.lr_scheduler_type, " lr ", tc.learning_rate,
                      ", ", oc.paged ? "paged AdamW (managed memory)" : "AdamW",
                      oc.loss_scaling ? ", fp16 loss scaling" : ""));

  // ---- resume -----------------------------------------------------------------------------------------
  if (!tc.resume_from_checkpoint.empty()) {
    const std::string ck = tc.resume_from_checkpoint == "latest" ? latest_checkpoint(tc.output_dir)
                                                                 : tc.resume_from_checkpoint;
    ENGINE_CHECK(!ck.empty(), "resume_from_checkpoint: latest: no checkpoint-<step> folder in ", tc.output_dir);
    lora.load_peft(ck);
    opt.load(ck);
    std::ifstream in(ck + "/trainer_state.json");
    ENGINE_CHECK(in.good(), ck, "/trainer_state.json: cannot open");
    nlohmann::json j;
    try {
      in >> j;
    } catch (const std::exception& e) {
      throw engine::Error(ck + "/trainer_state.json: not valid JSON: " + e.what());
    }
    DataPosition pos;
    st = state_from_json(j, ck + "/trainer_state.json", &pos);
    if (pos.epoch_examples >= 0)
      st.window = resume_window(pos, tc.per_device_train_batch_size * world_ * tc.gradient_accumulation_steps,
                                data.size(), per_epoch, tc.group_by_length, ck + "/trainer_state.json");
    say(engine::str_cat("resumed from ", ck, " at step ", st.global_step));
  }

  // The step's loss stays on the device until the optimizer's one read at the end of the step.
  Tensor loss_sum = eng_.empty({1}, DType::kF32), n_valid = eng_.empty({1}, DType::kI32);
  Tensor host_loss = eng_.empty_host({1}, DType::kF32);

  std::unique_ptr<engine::EventWriter> tb;
  if (lead && tc.report_to == "tensorboard") {
    char stamp[64];
    const std::time_t now = std::time(nullptr);
    std::strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", std::localtime(&now));
    tb = std::make_unique<engine::EventWriter>(tc.output_dir + "/runs/" + stamp);
  }

  const int64_t global_batch = tc.per_device_train_batch_size * world_ * tc.gradient_accumulation_steps;
  auto save_checkpoint = [&](const LoopState& s) {
    if (!lead) return;
    const DataPosition pos{std::min(s.window * global_batch, data.size()), global_batch};
    const std::string final_dir = tc.output_dir + "/checkpoint-" + std::to_string(s.global_step);
    const std::string tmp = tc.output_dir + "/.checkpoint-" + std::to_string(s.global_step) + ".tmp";
    remove_tree(tmp);
    mkdir_p(tmp);
    lora.save_peft(tmp, c.model.path);
    opt.save(tmp);
    engine::write_file_atomic(tmp + "/trainer_state.json", state_to_json(s, pos, world_).dump(2) + "\n");
    remove_tree(final_dir);
    ENGINE_CHECK(::rename(tmp.c_str(), final_dir.c_str()) == 0, "cannot rename ", tmp, " to ", final_dir, ": ",
                 std::strerror(errno));
    if (tc.save_total_limit && *tc.save_total_limit > 0) {
      auto cks = list_checkpoints(tc.output_dir);
      while (int64_t(cks.size()) > *tc.save_total_limit) {
        remove_tree(cks.front().second);
        cks.erase(cks.begin());
      }
    }
    say("saved " + final_dir);
  };

  // ---- the loop -----------------------------------------------------------------------------------------
  TrainResult res;
  double log_loss = 0, log_tokens = 0;
  int64_t log_count = 0;
  float last_norm = 0;
  auto t_log = std::chrono::steady_clock::now();
  const auto t_start = t_log;
  const int64_t start_step = st.global_step;
  eng_.allocator().reset_peak();
  engine::Communicator* comm = eng_.comm();
  Tensor& grads = lora.grads();
  std::vector<std::vector<int64_t>> batches = sampler.epoch(st.epoch);
  std::vector<std::vector<int64_t>> global_batches = sampler.global_epoch(st.epoch);
  while (st.global_step < total) {
    const int64_t GA = tc.gradient_accumulation_steps;
    int64_t first = st.window * GA;
    if (first >= int64_t(batches.size())) {  // epoch finished
      ++st.epoch;
      st.window = 0;
      first = 0;
      batches = sampler.epoch(st.epoch);
      global_batches = sampler.global_epoch(st.epoch);
    }
    const int64_t last = std::min<int64_t>(first + GA, int64_t(batches.size()));
    std::vector<engine::HostBatch> window;
    std::vector<int64_t> window_examples;  // every rank's examples of this window: the global counts
    for (int64_t i = first; i < last; ++i) {
      window.push_back(engine::collate(data, batches[size_t(i)], tok.pad_id()));
      const std::vector<int64_t>& g = global_batches[size_t(i)];
      window_examples.insert(window_examples.end(), g.begin(), g.end());
    }
    // N is the GLOBAL label count of the window (SPEC.md §5.2), the same on every rank with no exchange.
    const TokenCounts counts = count_tokens(data, window_examples);
    const int64_t N = std::max<int64_t>(counts.labels, 1);
    const float loss_scale = opt.loss_scale();
    eng_.zero(loss_sum);
    eng_.zero(n_valid);
    for (const engine::HostBatch& hb : window) {
      const uint64_t micro = uint64_t(st.micro_step++);
      if (hb.B == 0) continue;  // an empty slice (sampler.h): no backward, but the all-reduce below still joins
      const Batch b = make_batch(eng_, hb.B, hb.T, hb.ids, hb.attention_mask, hb.labels);
      model.set_micro_step(micro * uint64_t(world_) + uint64_t(rank_));  // world 1: the micro-batch index
      model.forward_backward(b, loss_scale / float(N), loss_sum, n_valid);
    }
    // Sum, not mean: every rank already divided by the global N. The loss sum rides in the same group.
    if (comm)
      comm->all_reduce_sum_f32({{grads.ptr<float>(), size_t(grads.numel())}, {loss_sum.ptr<float>(), 1}},
                               eng_.stream());
    eng_.copy(host_loss, loss_sum);
    const StepResult sr = opt.step();  // synchronizes: host_loss is ready afterwards
    const bool overflow = sr.skipped;
    const double lr = sr.lr;
    const double loss = double(host_loss.ptr<float>()[0]) / double(N);
    last_norm = sr.grad_norm;
    ++st.global_step;
    ++st.window;
    if (st.global_step == start_step + 1) res.first_loss = loss;
    res.step_losses.push_back(loss);
    if (std::isfinite(loss)) {
      log_loss += loss;
      ++log_count;
    }
    log_tokens += double(counts.tokens);
    if (dp_) dp_->heartbeat();
    const double epoch_f = double(st.epoch) + double(std::min<int64_t>(st.window * GA, int64_t(batches.size()))) /
                                                  double(std::max<size_t>(batches.size(), 1));
    const bool epoch_end = st.window * GA >= int64_t(batches.size());
    const bool log_now = (tc.logging_strategy == "steps" && st.global_step % tc.logging_steps == 0) ||
                         (tc.logging_strategy == "epoch" && epoch_end) || st.global_step == total ||
                         st.global_step == start_step + 1;
    if (overflow)
      say(engine::str_cat("step ", st.global_step, ": inf/NaN gradients, step skipped, loss scale -> ",
                          opt.loss_scale()));
    if (log_now && tc.logging_strategy != "no") {
      const auto now = std::chrono::steady_clock::now();
      const double dt = std::chrono::duration<double>(now - t_log).count();
      const double tps = log_tokens / std::max(dt, 1e-9);
      const double mean_loss = log_count ? log_loss / double(log_count) : NAN;
      const double elapsed = std::chrono::duration<double>(now - t_start).count();
      const double eta = elapsed / double(st.global_step - start_step) * double(total - st.global_step);
      const double peak_gib = double(eng_.allocator().stats().peak_bytes) / double(1u << 30);
      char line[320];
      std::snprintf(line, sizeof(line),
                    "step %lld/%lld | epoch %.2f | loss %.4f | lr %.3e | grad_norm %.4f | %.0f tok/s | ETA %s | "
                    "peak mem %.2f GiB",
                    (long long)st.global_step, (long long)total, epoch_f, mean_loss, lr, double(last_norm), tps,
                    fmt_duration(eta).c_str(), peak_gib);
      say(line);
      if (tb) {
        tb->add_scalar("train/loss", float(mean_loss), st.global_step);
        tb->add_scalar("train/learning_rate", float(lr), st.global_step);
        tb->add_scalar("train/grad_norm", last_norm, st.global_step);
        tb->add_scalar("train/tokens_per_second", float(tps), st.global_step);
        tb->add_scalar("train/epoch", float(epoch_f), st.global_step);
        if (oc.loss_scaling) tb->add_scalar("train/loss_scale", opt.loss_scale(), st.global_step);
        tb->flush();
      }
      res.final_loss = mean_loss;
      log_loss = 0;
      log_tokens = 0;
      log_count = 0;
      t_log = now;
    }
    const bool save_now = (tc.save_strategy == "steps" && st.global_step % tc.save_steps == 0) ||
                          (tc.save_strategy == "epoch" && epoch_end);
    if (save_now && st.global_step < total) save_checkpoint(st);
  }
  if (tc.save_strategy != "no" && st.global_step > start_step) save_checkpoint(st);
  res.steps = st.global_step;
  res.skipped_steps = opt.skipped_steps();
  res.adapter_dir = tc.output_dir;
  {
    Tensor hp = eng_.empty_host({lora.num_params()}, DType::kF32);
    eng_.copy(hp, lora.params());
    eng_.synchronize();
    res.params_hash = engine::fnv1a64(hp.ptr<float>(), size_t(hp.numel()) * sizeof(float));
  }
  if (lead) {
    char abs_path[PATH_MAX];
    const std::string base = ::realpath(c.model.path.c_str(), abs_path) ? std::string(abs_path) : c.model.path;
    lora.save_peft(tc.output_dir, base);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    say(engine::str_cat("done: ", st.global_step, " steps in ", fmt_duration(secs), ", ", res.skipped_steps,
                        " skipped, final loss ", res.final_loss, "; adapter written to ", tc.output_dir,
                        "/adapter_model.safetensors"));
  }
  if (dp_) dp_->finish(tc.ddp_timeout);  // no rank exits (closing its sockets) while rank 0 still saves
  return res;
}

}  // namespace models
