// tools/make_tiny_gemma.cpp: writes a random Gemma-2 in the HF layout (config.json + model.safetensors),
// sizes from the command line. Used by tests, the demo and benchmarks (no download needed).
// --bnb4: the same model as a bitsandbytes 4-bit checkpoint (models/bnb_checkpoint.h), quantized from the
// stored dtype on the CPU, as transformers' save_pretrained writes a model loaded in 4 bits.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>

#include "models/bnb_checkpoint.h"
#include "models/gemma2_random.h"

int main(int argc, char** argv) {
  CLI::App app{"make_tiny_gemma: write a random Gemma-2 checkpoint (config.json + model.safetensors)"};
  std::string out, dtype_s = "bf16";
  int64_t D = 64, F = 128, L = 2, H = 4, KV = 2, HD = 16, V = 512, window = 4096;
  double qpas = 0;
  bool bnb4 = false;
  models::RandomInit init;
  app.add_option("--out", out, "output folder (created)")->required();
  app.add_option("--hidden", D, "D (hidden_size)");
  app.add_option("--intermediate", F, "F (intermediate_size)");
  app.add_option("--layers", L, "L (num_hidden_layers)");
  app.add_option("--heads", H, "H (num_attention_heads)");
  app.add_option("--kv-heads", KV, "KV (num_key_value_heads)");
  app.add_option("--head-dim", HD, "HD (head_dim)");
  app.add_option("--vocab", V, "V (vocab_size)");
  app.add_option("--sliding-window", window, "window of the sliding (even) layers");
  app.add_option("--query-pre-attn-scalar", qpas, "attention scale^-2 (default: head dim)");
  app.add_option("--dtype", dtype_s, "stored dtype")->check(CLI::IsMember({"bf16", "f16", "f32"}));
  app.add_option("--seed", init.seed, "Philox seed");
  app.add_option("--init-std", init.std, "std of the linear and embedding weights");
  app.add_option("--norm-std", init.norm_std, "std of the RMSNorm weights w (applied scale 1 + w)");
  app.add_flag("--bnb4", bnb4, "write the linear weights bitsandbytes-4-bit quantized (nf4, double quant)");
  CLI11_PARSE(app, argc, argv);
  try {
    models::Gemma2Config c = models::tiny_config(D, F, L, H, KV, HD, V);
    c.sliding_window = window;
    if (qpas > 0) c.query_pre_attn_scalar = qpas;
    const engine::DType dt = dtype_s == "bf16" ? engine::DType::kBF16
                             : dtype_s == "f16" ? engine::DType::kF16 : engine::DType::kF32;
    if (bnb4) {  // the dense checkpoint in a sibling folder first, then its 4-bit form in `out`
      const std::string dense = out + ".dense.tmp";
      std::filesystem::remove_all(dense);
      std::filesystem::create_directories(dense);
      models::write_random_checkpoint(dense, c, dt, init);
      engine::Engine eng({engine::Backend::kCPU});
      models::write_bnb_checkpoint(dense, out, dt, eng);
      std::filesystem::remove_all(dense);
    } else {
      models::write_random_checkpoint(out, c, dt, init);
    }
    std::printf("wrote %s: D=%lld F=%lld L=%lld H=%lld KV=%lld HD=%lld V=%lld (%s)\n", out.c_str(), (long long)D,
                (long long)F, (long long)L, (long long)H, (long long)KV, (long long)HD, (long long)V, dtype_s.c_str());
    if (bnb4) std::printf("linear weights: bitsandbytes nf4 + double quant\n");
    return 0;
  } catch (const engine::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
