// tools/chat_gemma.cpp: chat with a Gemma-2 checkpoint and an optional PEFT LoRA adapter (ours or peft's),
// streaming the answers, with prompt and generation speed at the end.
//   chat_gemma --model DIR [--adapter DIR] [--nf4] [--dtype bf16|f16|f32] [--cpu]
//              (--prompt TEXT | --prompts FILE | --prompt-ids 2,45,... | --interactive) [--raw]
//              [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--repetition-penalty R]
//              [--seed S] [--max-context N] [--tokenizer FILE] [--print-ids] [--ignore-eos]
//   --prompts: one question per line (blank lines skipped), each a fresh conversation (tools/demo/questions.txt).
//   --interactive: a multi-turn chat on stdin; "/reset" starts over, "/quit" or end of input leaves.
//   --raw: no chat template: <bos> + the text. --prompt-ids: token ids (BOS included, no tokenizer needed).
//   --temperature 0 (default) is greedy; > 0 samples (with --top-k/--top-p, seeded by --seed).
//   --print-ids prints "ids: a,b,..." (the generated tokens) after each answer, for parity scripts.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "models/generate.h"
#include "models/lora.h"

using namespace engine;

namespace {

// Reads r, lora_alpha, use_rslora and target_modules of a peft adapter folder (as tools/gemma_dump.cpp).
models::LoraSpec read_adapter_spec(const std::string& dir) {
  const std::string cfg = dir + "/adapter_config.json", weights = dir + "/adapter_model.safetensors";
  if (!std::filesystem::is_directory(dir)) throw Error(str_cat("--adapter ", dir, ": no such folder"));
  if (!std::filesystem::is_regular_file(cfg))
    throw Error(str_cat("--adapter ", dir, ": missing adapter_config.json (a PEFT adapter folder has "
                        "adapter_config.json and adapter_model.safetensors)"));
  if (!std::filesystem::is_regular_file(weights))
    throw Error(str_cat("--adapter ", dir, ": missing adapter_model.safetensors"));
  nlohmann::json aj;
  try {
    std::ifstream in(cfg);
    in >> aj;
  } catch (const std::exception& e) {
    throw Error(str_cat(cfg, ": not valid JSON: ", e.what()));
  }
  models::LoraSpec ls;
  try {
    ls.r = aj.at("r").get<int64_t>();
    ls.alpha = aj.at("lora_alpha").get<double>();
    ls.use_rslora = aj.value("use_rslora", false);
    ls.dropout = 0;  // inference
    const std::vector<std::string> all = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    const auto& tm = aj.at("target_modules");
    std::vector<std::string> targets;
    if (tm.is_string() && tm == "all-linear") targets = all;
    for (const std::string& t : all)
      for (const auto& x : tm)  // a string iterates as itself
        if (x.is_string() && x == t) targets.push_back(t);
    if (targets.empty()) throw Error("target_modules names none of q_proj ... down_proj");
    ls.targets = targets;
  } catch (const std::exception& e) {
    throw Error(str_cat(cfg, ": ", e.what()));
  }
  return ls;
}

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      const long v = std::stol(item, &used);
      if (used != item.size() || v < 0 || v > INT32_MAX) throw std::invalid_argument(item);
      ids.push_back(int32_t(v));
    } catch (const std::exception&) {
      throw Error(str_cat("--prompt-ids: '", item, "' is not a token id (expected e.g. 2,45,17)"));
    }
  }
  if (ids.empty()) throw Error("--prompt-ids: no ids");
  return ids;
}

std::string join_ids(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s;
}

struct Totals {
  int64_t prompt_tokens = 0, generated = 0;
  double prompt_s = 0, decode_s = 0;
  void add(const models::GenerateResult& r) {
    prompt_tokens += r.prompt_tokens;
    generated += int64_t(r.ids.size());
    prompt_s += r.prompt_seconds;
    decode_s += r.decode_seconds;
  }
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"chat_gemma: chat with Gemma-2 (+ an optional LoRA adapter), streaming, KV-cached decoding"};
  std::string model_dir, adapter, dtype_s = "bf16", prompt, prompts_file, prompt_ids_s, tokenizer_path;
  bool nf4 = false, cpu = false, interactive = false, raw = false, print_ids = false;
  models::GenerateOptions go;
  int64_t max_context = 4096;
  app.add_option("--model", model_dir, "HF Gemma-2 folder (config.json, *.safetensors, tokenizer.model)")->required();
  app.add_option("--adapter", adapter, "PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors)");
  app.add_flag("--nf4", nf4, "quantize the base linear weights to NF4 (QLoRA)");
  app.add_option("--dtype", dtype_s, "compute dtype")->check(CLI::IsMember({"f32", "bf16", "f16"}));
  app.add_flag("--cpu", cpu, "CPU backend even when a CUDA device is present");
  auto* o_prompt = app.add_option("--prompt", prompt, "one question");
  auto* o_prompts = app.add_option("--prompts", prompts_file, "file of questions, one per line, each asked afresh");
  auto* o_ids = app.add_option("--prompt-ids", prompt_ids_s, "comma-separated token ids (BOS included), implies --raw");
  auto* o_inter = app.add_flag("--interactive", interactive, "multi-turn chat on stdin (/reset, /quit)");
  o_prompt->excludes(o_prompts)->excludes(o_ids)->excludes(o_inter);
  o_prompts->excludes(o_ids)->excludes(o_inter);
  o_ids->excludes(o_inter);
  app.add_flag("--raw", raw, "no chat template: <bos> + the prompt text");
  app.add_option("--max-new-tokens", go.max_new_tokens, "tokens to generate at most per answer")
      ->check(CLI::PositiveNumber);
  app.add_option("--temperature", go.sampling.temperature, "0 = greedy; > 0 samples")->check(CLI::NonNegativeNumber);
  app.add_option("--top-k", go.sampling.top_k, "sample among the k most likely (0 = off)")->check(CLI::NonNegativeNumber);
  app.add_option("--top-p", go.sampling.top_p, "nucleus sampling mass (1 = off)")->check(CLI::Range(1e-9, 1.0));
  app.add_option("--repetition-penalty", go.sampling.repetition_penalty, "transformers' repetition penalty (1 = off)")
      ->check(CLI::PositiveNumber);
  app.add_option("--seed", go.sampling.seed, "sampling seed");
  app.add_option("--max-context", max_context, "KV cache length in tokens (prompt + answers)")
      ->check(CLI::PositiveNumber);
  app.add_option("--tokenizer", tokenizer_path, "SentencePiece model (default: MODEL/tokenizer.model)");
  app.add_flag("--print-ids", print_ids, "print the generated token ids after each answer");
  app.add_flag("--ignore-eos", go.ignore_eos, "do not stop on EOS / <end_of_turn> (fixed-length runs)");
  CLI11_PARSE(app, argc, argv);
  try {
    if (prompt.empty() && prompts_file.empty() && prompt_ids_s.empty() && !interactive)
      throw Error("give one of --prompt, --prompts, --prompt-ids or --interactive");
    if (!std::filesystem::is_regular_file(model_dir + "/config.json"))
      throw Error(str_cat("--model ", model_dir, ": no config.json (expected an HF Gemma-2 folder)"));
    std::vector<std::string> questions;
    if (!prompts_file.empty()) {
      std::ifstream in(prompts_file);
      if (!in) throw Error(str_cat("--prompts ", prompts_file, ": cannot open"));
      for (std::string line; std::getline(in, line);) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (!trim_whitespace(line).empty()) questions.push_back(line);
      }
      if (questions.empty()) throw Error(str_cat("--prompts ", prompts_file, ": no questions in the file"));
    }
    if (!prompt.empty()) questions.push_back(prompt);

    std::unique_ptr<Tokenizer> tok;
    if (tokenizer_path.empty()) tokenizer_path = model_dir + "/tokenizer.model";
    if (prompt_ids_s.empty() || std::filesystem::is_regular_file(tokenizer_path)) {
      if (!std::filesystem::is_regular_file(tokenizer_path))
        throw Error(str_cat("tokenizer ", tokenizer_path, ": no such file (pass --tokenizer FILE)"));
      tok = std::make_unique<Tokenizer>(Tokenizer::from_file(tokenizer_path));
    }

    // Check the cheap inputs before loading the model.
    const models::LoraSpec spec = adapter.empty() ? models::LoraSpec{} : read_adapter_spec(adapter);
    const std::vector<int32_t> prompt_ids = prompt_ids_s.empty() ? std::vector<int32_t>{} : parse_ids(prompt_ids_s);

    Engine eng({cpu ? Backend::kCPU : Backend::kAuto});
    std::fprintf(stderr, "%s\n", eng.describe().c_str());
    models::Gemma2Options o;
    o.compute_dtype = dtype_s == "f32" ? DType::kF32 : dtype_s == "bf16" ? DType::kBF16 : DType::kF16;
    o.quantize_nf4 = nf4;
    models::Gemma2Model model = models::Gemma2Model::load(model_dir, eng, o);
    std::unique_ptr<models::LoraAdapters> lora;
    if (!adapter.empty()) {
      const models::LoraSpec& ls = spec;
      lora = std::make_unique<models::LoraAdapters>(model.config(), ls, eng);
      lora->load_peft(adapter);
      model.attach_lora(lora.get(), 0);
      std::fprintf(stderr, "adapter %s: r=%lld alpha=%g, %zu modules\n", adapter.c_str(), (long long)ls.r, ls.alpha,
                   lora->modules().size());
    }
    max_context = std::min(max_context, model.config().max_position_embeddings);
    models::Generator gen(model, max_context, tok.get());
    Totals tot;
    auto stream = [](const std::string& piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    };
    auto report = [&](const models::GenerateResult& r) {
      tot.add(r);
      if (tok) std::printf("\n");
      if (print_ids) std::printf("ids: %s\n", join_ids(r.ids).c_str());
      std::fprintf(stderr, "[%zu tokens, stopped by %s]\n", r.ids.size(), models::stop_reason_name(r.reason));
      std::fflush(stdout);
    };

    if (!prompt_ids_s.empty()) {
      const models::GenerateResult r = gen.generate(prompt_ids, go, stream);
      report(r);
    } else if (interactive) {
      models::ChatSession chat(gen, *tok, raw);
      std::string line;
      while (true) {
        std::printf("> ");
        std::fflush(stdout);
        if (!std::getline(std::cin, line) || trim_whitespace(line) == "/quit") break;
        if (trim_whitespace(line) == "/reset") { chat.reset(); continue; }
        if (trim_whitespace(line).empty()) continue;
        report(chat.ask(line, go, stream));
      }
    } else {
      for (const std::string& q : questions) {
        models::ChatSession chat(gen, *tok, raw);  // each question is a fresh conversation
        std::printf("### %s\n", q.c_str());
        std::fflush(stdout);
        report(chat.ask(q, go, stream));
      }
    }
    std::fprintf(stderr, "prompt: %lld tokens in %.3f s (%.1f tokens/s); generation: %lld tokens in %.3f s (%.1f tokens/s)\n",
                 (long long)tot.prompt_tokens, tot.prompt_s, tot.prompt_s > 0 ? tot.prompt_tokens / tot.prompt_s : 0.0,
                 (long long)tot.generated, tot.decode_s, tot.decode_s > 0 ? tot.generated / tot.decode_s : 0.0);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
