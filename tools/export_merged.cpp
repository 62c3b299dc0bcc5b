// tools/export_merged.cpp: merges a trained LoRA adapter into the base weights and writes an HF checkpoint
// folder (config, safetensors shards + index, tokenizer files) that transformers loads without peft.
//   export_merged --model DIR --adapter DIR --out DIR [--base nf4|16bit] [--dtype bf16|f16|f32]
//                 [--compute-dtype bf16|f16|f32] [--shard-size-mb 5000] [--force] [--cpu]
// --base nf4 (default) merges into the dequantized NF4 weights the adapter was trained against; 16bit into
// the original checkpoint weights. models/export.h explains the difference.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>

#include "engine/engine.h"
#include "models/export.h"

namespace {
engine::DType parse_dtype(const std::string& s) {
  return s == "f32" ? engine::DType::kF32 : s == "f16" ? engine::DType::kF16 : engine::DType::kBF16;
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"export_merged: merge a LoRA adapter into Gemma-2 and write an HF checkpoint folder"};
  app.footer(
      "--base nf4 reproduces the trained QLoRA model (the adapter was fitted to the NF4 weights) but bakes the\n"
      "4-bit quantization error into the checkpoint; --base 16bit keeps the original full-precision weights, to\n"
      "which the adapter was never fitted. See models/export.h (and huggingface/peft #2105, #2321).");
  models::ExportOptions o;
  std::string base = "nf4", dtype_s = "bf16", compute_s = "bf16";
  double shard_mb = 5000;
  bool cpu = false;
  app.add_option("--model", o.model_dir, "base HF Gemma-2 folder the adapter was trained on")
      ->required()
      ->check(CLI::ExistingDirectory);
  app.add_option("--adapter", o.adapter_dir, "peft LoRA adapter folder")->required();
  app.add_option("--out", o.out_dir, "output folder (written atomically)")->required();
  app.add_option("--base", base, "weights to merge into: nf4 (dequantized, as trained) or 16bit (original)")
      ->check(CLI::IsMember({"nf4", "16bit"}))
      ->capture_default_str();
  app.add_option("--dtype", dtype_s, "stored dtype of the export")
      ->check(CLI::IsMember({"bf16", "f16", "f32"}))
      ->capture_default_str();
  app.add_option("--compute-dtype", compute_s,
                 "with --base nf4: the dtype training loaded the base in before quantizing (its compute dtype)")
      ->check(CLI::IsMember({"bf16", "f16", "f32"}))
      ->capture_default_str();
  app.add_option("--shard-size-mb", shard_mb, "largest shard in MB (10^6 bytes); one shard = model.safetensors")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_flag("--force", o.force, "replace a non-empty --out");
  app.add_flag("--cpu", cpu, "CPU backend even when a CUDA device is present");
  CLI11_PARSE(app, argc, argv);
  try {
    o.base = base == "16bit" ? models::MergeBase::k16Bit : models::MergeBase::kNf4;
    o.out_dtype = parse_dtype(dtype_s);
    o.compute_dtype = parse_dtype(compute_s);
    o.shard_bytes = std::max<int64_t>(1, int64_t(std::llround(shard_mb * 1e6)));
    const bool tty = ::isatty(2) != 0;  // a terminal: one progress line rewritten in place; a log: one per tensor
    o.on_tensor = [tty](const std::string& name, int64_t i, int64_t n) {
      std::fprintf(stderr, tty ? "\r[%lld/%lld] %-60s" : "[%lld/%lld] %s\n", static_cast<long long>(i + 1),
                   static_cast<long long>(n), name.c_str());
      if (tty && i + 1 == n) std::fprintf(stderr, "\n");
    };
    engine::Engine eng({cpu ? engine::Backend::kCPU : engine::Backend::kAuto});
    std::fprintf(stderr, "%s\n", eng.describe().c_str());
    const models::ExportResult r = models::export_merged(o, eng);
    std::printf("export_merged: %s: %lld tensors (%lld merged, base %s), %.1f MB in %s\n", o.out_dir.c_str(),
                static_cast<long long>(r.num_tensors), static_cast<long long>(r.num_merged), base.c_str(),
                double(r.total_bytes) / 1e6, dtype_s.c_str());
    for (const std::string& f : r.files) std::printf("  %s\n", f.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
