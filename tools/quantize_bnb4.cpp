// tools/quantize_bnb4.cpp: writes a Gemma-2 checkpoint folder as a bitsandbytes 4-bit checkpoint (nf4, double
// quant; models/bnb_checkpoint.h): what transformers' save_pretrained writes for a model loaded with
// BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True), quantized
// with this engine's NF4 quantizer exactly as train_gemma quantizes the base (from the weight in --dtype).
//   quantize_bnb4 --model DIR --out DIR [--dtype bf16|f16|f32] [--cpu]
#include <CLI/CLI.hpp>
#include <cstdio>

#include "models/bnb_checkpoint.h"

int main(int argc, char** argv) {
  CLI::App app{"quantize_bnb4: write a Gemma-2 checkpoint as a bitsandbytes 4-bit (nf4, double quant) checkpoint"};
  std::string model_dir, out_dir, dtype_s = "bf16";
  bool cpu = false;
  app.add_option("--model", model_dir, "HF Gemma-2 folder")->required();
  app.add_option("--out", out_dir, "output folder (created; another folder than --model)")->required();
  app.add_option("--dtype", dtype_s, "dtype the weights are quantized from (training's compute dtype)")
      ->check(CLI::IsMember({"bf16", "f16", "f32"}));
  app.add_flag("--cpu", cpu, "CPU backend");
  CLI11_PARSE(app, argc, argv);
  try {
    engine::Engine eng({cpu ? engine::Backend::kCPU : engine::Backend::kAuto});
    const engine::DType dt = dtype_s == "bf16" ? engine::DType::kBF16
                             : dtype_s == "f16" ? engine::DType::kF16 : engine::DType::kF32;
    models::write_bnb_checkpoint(model_dir, out_dir, dt, eng);
    std::printf("wrote %s: %s as bitsandbytes nf4 + double quant (quantized from %s)\n", out_dir.c_str(),
                model_dir.c_str(), dtype_s.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
