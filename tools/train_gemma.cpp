// tools/train_gemma.cpp: QLoRA fine-tuning of Gemma-2 from an HF checkpoint folder.
//   train_gemma --config run.yaml [section.key=value ...] [--resume [latest|DIR]] [--cpu]
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "engine/engine.h"
#include "engine/train_config.h"
#include "models/trainer.h"

int main(int argc, char** argv) {
  CLI::App app{"train_gemma: QLoRA fine-tuning of Gemma-2 (NF4 base, LoRA adapters, PEFT output)"};
  app.footer(engine::TrainConfig::help_text());
  std::string config_path, resume;
  std::vector<std::string> overrides;
  bool force_cpu = false;
  app.add_option("--config", config_path, "YAML run config")->required()->check(CLI::ExistingFile);
  app.add_option("overrides", overrides, "dotted key=value overrides, applied in order");
  app.add_option("--resume", resume, "resume from 'latest' checkpoint in output_dir or a checkpoint folder")
      ->expected(0, 1)
      ->default_str("latest");
  app.add_flag("--cpu", force_cpu, "use the CPU backend even when a CUDA device is present");
  CLI11_PARSE(app, argc, argv);
  try {
    if (app.count("--resume")) overrides.push_back("training.resume_from_checkpoint=" + (resume.empty() ? "latest" : resume));
    const engine::TrainConfig cfg = engine::TrainConfig::load(config_path, overrides);
    std::printf("train_gemma: %s\n", config_path.c_str());
    cfg.print_table(std::cout);
    std::cout.flush();
    engine::EngineOptions eo;
    eo.backend = force_cpu ? engine::Backend::kCPU : engine::Backend::kAuto;
    engine::Engine eng(eo);
    models::Trainer trainer(cfg, eng);
    trainer.run();
    return 0;
  } catch (const engine::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
