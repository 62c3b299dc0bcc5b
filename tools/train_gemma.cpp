// tools/train_gemma.cpp: QLoRA fine-tuning of Gemma-2 from an HF checkpoint folder.
//   train_gemma --config run.yaml [section.key=value ...] [--resume [latest|DIR]] [--cpu]
//   Several GPUs (README "Several GPUs"): --nproc N starts and supervises N ranks on this host; or start
//   the ranks yourself with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT (engine/launcher.h).
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "engine/data_parallel.h"
#include "engine/engine.h"
#include "engine/launcher.h"
#include "engine/rendezvous.h"
#include "engine/train_config.h"
#include "models/trainer.h"

int main(int argc, char** argv) {
  CLI::App app{"train_gemma: QLoRA fine-tuning of Gemma-2 (NF4 base, LoRA adapters, PEFT output)"};
  app.footer(engine::TrainConfig::help_text());
  std::string config_path, resume;
  std::vector<std::string> overrides;
  bool force_cpu = false, dp_check = false;
  int nproc = 1;
  double rendezvous_timeout = 300;
  app.add_option("--config", config_path, "YAML run config")->required()->check(CLI::ExistingFile);
  app.add_option("overrides", overrides, "dotted key=value overrides, applied in order");
  app.add_option("--resume", resume, "resume from 'latest' checkpoint in output_dir or a checkpoint folder")
      ->expected(0, 1)
      ->default_str("latest");
  app.add_flag("--cpu", force_cpu, "use the CPU backend even when a CUDA device is present");
  app.add_option("--nproc", nproc, "data parallel: start N ranks on this host, one per GPU, and supervise them")
      ->check(CLI::Range(1, 1024));
  app.add_option("--rendezvous-timeout", rendezvous_timeout, "data parallel: seconds for every rank to arrive")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_flag("--dp-check", dp_check,
               "every rank prints its step losses and a hash of its final LoRA parameters (tests/multigpu)");
  CLI11_PARSE(app, argc, argv);
  engine::DistEnv env;
  try {
    env = engine::dist_env_from();
    if (nproc > 1) {
      ENGINE_CHECK(env.world_size == 1, "--nproc ", nproc, " inside a rank of a launched job (WORLD_SIZE=",
                   env.world_size, "): use one or the other");
      engine::LaunchOptions lo;
      lo.nproc = nproc;
      lo.exe = "/proc/self/exe";
      lo.argv = engine::strip_option(std::vector<std::string>(argv, argv + argc), "--nproc");
      return engine::launch_ranks(lo, std::cerr);
    }
    if (app.count("--resume")) overrides.push_back("training.resume_from_checkpoint=" + (resume.empty() ? "latest" : resume));
    const engine::TrainConfig cfg = engine::TrainConfig::load(config_path, overrides);
    if (env.rank == 0) {
      std::printf("train_gemma: %s\n", config_path.c_str());
      cfg.print_table(std::cout);
      std::cout.flush();
    }
    const engine::Backend backend = force_cpu ? engine::Backend::kCPU : engine::Backend::kAuto;
    engine::Engine eng(engine::rank_engine_options(env, backend, force_cpu ? 0 : engine::cuda_device_count()));
    // What must agree across ranks: the resolved config and the data file's size.
    const std::string yaml = cfg.to_yaml();
    struct stat sb {};
    const uint64_t data_bytes = ::stat(cfg.data.path.c_str(), &sb) == 0 ? uint64_t(sb.st_size) : 0;
    engine::DataParallelOptions dpo;
    dpo.fingerprint = engine::fnv1a64(&data_bytes, sizeof(data_bytes), engine::fnv1a64(yaml.data(), yaml.size()));
    dpo.rendezvous_timeout_s = rendezvous_timeout;
    dpo.step_timeout_s = cfg.training.ddp_timeout;
    engine::DataParallel dp(env, eng, dpo);
    models::Trainer trainer(cfg, eng, &dp);
    const models::TrainResult res = trainer.run();
    if (dp_check) {
      for (size_t i = 0; i < res.step_losses.size(); ++i)
        std::printf("dp_check rank=%d step=%zu loss=%.9e\n", env.rank, i + 1, res.step_losses[i]);
      std::printf("dp_check rank=%d params_fnv1a=%016llx\n", env.rank, (unsigned long long)res.params_hash);
      std::fflush(stdout);
    }
    return 0;
  } catch (const engine::Error& e) {
    if (env.world_size > 1) std::fprintf(stderr, "error: rank %d: %s\n", env.rank, e.what());
    else std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
