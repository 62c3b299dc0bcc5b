// tools/gemma_dump.cpp: runs this engine on one token batch and writes what parity tests compare with
// transformers/peft: logits, loss and gradients, as a safetensors file.
//   gemma_dump --model DIR --batch batch.json --out out.safetensors [--dtype f32|bf16|f16] [--cpu]
//              [--train-base | --adapter DIR [--save-adapter DIR]] [--nf4 [--dump-nf4]]
//              [--steps N --lr LR --warmup W --max-grad-norm C --weight-decay WD]   (with --adapter)
//   batch.json: {"B": 2, "T": 7, "ids": [...], "attention_mask": [...], "labels": [...]}, labels unshifted
//   (HF style, -100 = ignore). Gradients are of the mean token loss (HF's loss): "grad.<HF or peft name>".
//   --steps N then runs N optimizer steps (AdamW, cosine schedule with warmup, clipping) on the same batch
//   and also writes "step_losses" (N) and the adapters after the last step, "param.<peft name>".
//   --dump-nf4 adds the NF4 arrays of every linear as loaded (bnb_checkpoint_parity.py compares them with a
//   bitsandbytes checkpoint's): "nf4.<HF name>.{packed,absmax_q}" (u8), "nf4.<HF name>.{absmax2,offset}" (f32).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/safetensors.h"
#include "models/gemma2.h"
#include "models/lora.h"
#include "models/optimizer.h"

using namespace engine;

int main(int argc, char** argv) {
  CLI::App app{"gemma_dump: logits, loss and gradients of a Gemma-2 checkpoint on one batch (parity tests)"};
  std::string model_dir, batch_path, out_path, dtype_s = "f32", adapter, save_adapter;
  bool cpu = false, train_base = false, nf4 = false, dump_nf4 = false;
  int64_t steps = 0, warmup = 0;
  double lr = 1e-3, max_grad_norm = 0.3, weight_decay = 0.001;
  app.add_option("--model", model_dir, "HF Gemma-2 folder")->required();
  app.add_option("--batch", batch_path, "batch JSON")->required()->check(CLI::ExistingFile);
  app.add_option("--out", out_path, "output safetensors")->required();
  app.add_option("--dtype", dtype_s, "compute dtype")->check(CLI::IsMember({"f32", "bf16", "f16"}));
  app.add_flag("--cpu", cpu, "CPU backend");
  app.add_flag("--train-base", train_base, "gradients of every base parameter (full fine-tuning)");
  app.add_flag("--nf4", nf4, "quantize the linear weights to NF4 (QLoRA)");
  app.add_flag("--dump-nf4", dump_nf4, "also write the NF4 arrays of every linear (with --nf4)");
  app.add_option("--adapter", adapter, "peft LoRA adapter folder: gradients of its A and B");
  app.add_option("--save-adapter", save_adapter, "write the loaded adapter back with this engine's writer");
  app.add_option("--steps", steps, "optimizer steps on the batch after the gradient dump");
  app.add_option("--lr", lr, "peak learning rate for --steps");
  app.add_option("--warmup", warmup, "warmup steps for --steps");
  app.add_option("--max-grad-norm", max_grad_norm, "clipping for --steps");
  app.add_option("--weight-decay", weight_decay, "weight decay for --steps");
  CLI11_PARSE(app, argc, argv);
  try {
    ENGINE_CHECK(!dump_nf4 || nf4, "--dump-nf4 needs --nf4");
    Engine eng({cpu ? Backend::kCPU : Backend::kAuto});
    std::fprintf(stderr, "%s\n", eng.describe().c_str());
    std::ifstream in(batch_path);
    nlohmann::json bj;
    in >> bj;
    const int64_t B = bj.at("B"), T = bj.at("T");
    const auto ids = bj.at("ids").get<std::vector<int32_t>>(), mask = bj.at("attention_mask").get<std::vector<int32_t>>(),
               labels = bj.at("labels").get<std::vector<int32_t>>();
    models::Gemma2Options o;
    o.compute_dtype = dtype_s == "f32" ? DType::kF32 : dtype_s == "bf16" ? DType::kBF16 : DType::kF16;
    o.train_base = train_base;
    o.quantize_nf4 = nf4;
    models::Gemma2Model m = models::Gemma2Model::load(model_dir, eng, o);
    std::unique_ptr<models::LoraAdapters> lora;
    if (!adapter.empty()) {
      std::ifstream ac(adapter + "/adapter_config.json");
      nlohmann::json aj;
      ac >> aj;
      models::LoraSpec ls;
      ls.r = aj.at("r");
      ls.alpha = aj.at("lora_alpha");
      ls.dropout = 0;  // parity runs use dropout 0 (SPEC.md §7.7)
      ls.use_rslora = aj.value("use_rslora", false);
      ls.targets.clear();
      for (const char* t : {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
        for (const auto& x : aj.at("target_modules"))
          if (x == t) ls.targets.push_back(t);
      lora = std::make_unique<models::LoraAdapters>(m.config(), ls, eng);
      lora->load_peft(adapter);
      m.attach_lora(lora.get(), 0);
      if (!save_adapter.empty()) lora->save_peft(save_adapter, model_dir);
    }
    int64_t n = 0;  // shifted targets: HF's mean divides by these
    for (int64_t r = 0; r < B; ++r)
      for (int64_t t = 1; t < T; ++t) n += labels[size_t(r * T + t)] != -100;
    const models::Batch b = models::make_batch(eng, B, T, ids, mask, labels);
    Tensor loss = eng.empty({1}, DType::kF32);
    eng.zero(loss);
    m.forward_backward(b, 1.f / float(n), loss, TensorView{});
    Tensor logits = m.logits(b);
    std::vector<Tensor> keep;
    std::vector<std::pair<std::string, TensorView>> out;
    auto add = [&](const std::string& name, const Tensor& t) {
      Tensor h32 = eng.empty_host(t.shape(), DType::kF32), h = eng.empty_host(t.shape(), t.dtype());
      eng.copy(h, t);
      eng.synchronize();
      for (int64_t i = 0; i < t.numel(); ++i) h32.ptr<float>()[i] = float(load_f64(h.data(), h.dtype(), i));
      keep.push_back(h32);
      out.emplace_back(name, h32.view());
    };
    add("logits", logits);
    if (dump_nf4)
      for (const auto& [name, q] : m.nf4_weights()) {
        const std::pair<const char*, const Tensor*> parts[] = {
            {"packed", &q->packed}, {"absmax_q", &q->absmax_q}, {"absmax2", &q->absmax2}, {"offset", &q->offset}};
        for (const auto& [part, t] : parts) {
          Tensor h = eng.empty_host(t->shape(), t->dtype());  // the raw arrays, no conversion
          eng.copy(h, *t);
          eng.synchronize();
          keep.push_back(h);
          out.emplace_back("nf4." + name + "." + part, h.view());
        }
      }
    add("loss_sum", loss);
    Tensor nt = eng.empty_host({1}, DType::kF32);
    nt.ptr<float>()[0] = float(n);
    keep.push_back(nt);
    out.emplace_back("n_valid", nt.view());
    if (train_base)
      for (models::Param* p : m.parameters()) add("grad." + p->name, p->grad);
    if (lora)
      for (const models::LoraModule& mod : lora->modules()) {
        add("grad." + lora->peft_name(mod, true), mod.dA);
        add("grad." + lora->peft_name(mod, false), mod.dB);
      }
    if (steps > 0) {
      ENGINE_CHECK(lora != nullptr, "--steps needs --adapter");
      models::OptimizerConfig oc;
      oc.lr = lr;
      oc.weight_decay = weight_decay;
      oc.max_grad_norm = max_grad_norm;
      oc.warmup_steps = warmup;
      oc.total_steps = steps;
      models::Optimizer opt(eng, lora->params(), lora->grads(), oc);
      lora->zero_grads();
      Tensor losses = eng.empty_host({steps}, DType::kF32), host = eng.empty_host({1}, DType::kF32);
      for (int64_t s = 0; s < steps; ++s) {
        eng.zero(loss);
        m.set_micro_step(uint64_t(s));
        m.forward_backward(b, 1.f / float(n), loss, TensorView{});
        eng.copy(host, loss);
        opt.step();
        losses.ptr<float>()[s] = host.ptr<float>()[0] / float(n);
      }
      keep.push_back(losses);
      out.emplace_back("step_losses", losses.view());
      for (const models::LoraModule& mod : lora->modules()) {
        add("param." + lora->peft_name(mod, true), mod.A);
        add("param." + lora->peft_name(mod, false), mod.B);
      }
    }
    write_safetensors(out_path, out);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
