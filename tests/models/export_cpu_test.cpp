// tests/models/export_cpu_test.cpp (label cpu): merged-adapter export. The export, loaded as a plain dense
// model, must give the logits of base + adapter (16bit: the f32 base; nf4: the NF4 base), with several shards
// and an index, tokenizer files copied, one rounding to the output dtype, and every error path leaving no
// partial folder behind.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "engine/safetensors.h"
#include "models/export.h"
#include "models/gemma2.h"
#include "models/gemma2_random.h"
#include "tests/models/model_test_util.h"
#include "tests/test_util.h"

namespace {

namespace fs = std::filesystem;
using namespace models;
using test::host_values;
using test::Tol;

std::vector<double> max_abs_diff_and_scale(const std::vector<double>& a, const std::vector<double>& b) {
  double d = 0, s = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(a[i] - b[i])), s = std::max(s, std::fabs(b[i]));
  return {d, s};
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

class ExportCpu : public ::testing::Test {
 protected:
  void SetUp() override {
    cfg_ = tiny_config(/*D*/ 64, /*F*/ 128, /*L*/ 2, /*H*/ 2, /*KV*/ 1, /*HD*/ 32, /*V*/ 37);
    cfg_.sliding_window = 3;
    fs::create_directories(base_);
    write_random_checkpoint(base_, cfg_, DType::kF32, RandomInit{7, 0.1, 0.2});
    make_adapter(adapter_, 4, 8, {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"});
  }

  // A peft adapter with random A and B (peft's B = 0 would make the merge a no-op).
  void make_adapter(const std::string& dir, int64_t r, double alpha, std::vector<std::string> targets) {
    LoraSpec s;
    s.r = r;
    s.alpha = alpha;
    s.targets = std::move(targets);
    test::write_random_adapter(cfg_, s, 11, 0.15f, dir, base_);
  }

  // Logits (f32 compute) of a checkpoint folder, optionally NF4-quantized and with an adapter attached.
  std::vector<double> logits(const std::string& dir, bool nf4, const std::string& adapter = "") {
    Gemma2Options o;
    o.compute_dtype = DType::kF32;
    o.quantize_nf4 = nf4;
    Gemma2Model m = Gemma2Model::load(dir, eng_, o);
    std::unique_ptr<LoraAdapters> l;
    if (!adapter.empty()) {
      l = std::make_unique<LoraAdapters>(m.config(), lora_spec_from_peft(adapter), eng_);
      l->load_peft(adapter);
      m.attach_lora(l.get(), 0);
    }
    const std::vector<int32_t> ids = {2, 7, 3, 9, 1, 2, 5, 8, 30, 36}, mask(10, 1);
    return host_values(eng_, m.logits(make_batch(eng_, 2, 5, ids, mask, ids)));
  }

  ExportOptions opts(MergeBase b, DType out) const {
    ExportOptions o;
    o.model_dir = base_;
    o.adapter_dir = adapter_;
    o.out_dir = out_;
    o.base = b;
    o.out_dtype = out;
    o.compute_dtype = DType::kF32;  // as logits() trains/evaluates
    return o;
  }

  std::string error_of(const ExportOptions& o) {
    try {
      export_merged(o, eng_);
    } catch (const engine::Error& e) {
      return e.what();
    }
    return "(no error)";
  }

  // Entries of the test folder: a failed export must leave none of its own (no ".tmp." folder, no out).
  std::vector<std::string> top_entries() const {
    std::vector<std::string> e;
    for (const auto& d : fs::directory_iterator(tmp_.path())) e.push_back(d.path().filename());
    std::sort(e.begin(), e.end());
    return e;
  }

  Engine eng_{{engine::Backend::kCPU}};
  test::TempDir tmp_;
  std::string base_ = tmp_.file("base"), adapter_ = tmp_.file("adapter"), out_ = tmp_.file("out");
  Gemma2Config cfg_;
};

TEST_F(ExportCpu, SixteenBitExportMatchesBasePlusAdapter) {
  const ExportResult r = export_merged(opts(MergeBase::k16Bit, DType::kF32), eng_);
  EXPECT_EQ(r.num_merged, 2 * 7);
  EXPECT_EQ(r.files, (std::vector<std::string>{"config.json", "model.safetensors"}));
  const std::vector<double> want = logits(base_, false, adapter_), got = logits(out_, false),
                            plain = logits(base_, false);
  // Only the f32 rounding of W' separates the two computations.
  EXPECT_CLOSE(got, want, (Tol{1e-5, 1e-4}));
  const auto d = max_abs_diff_and_scale(plain, want);
  EXPECT_GT(d[0], 1e-2 * d[1]);  // the adapter matters: the comparison above could fail
}

TEST_F(ExportCpu, Nf4ExportMatchesTheQuantizedBasePlusAdapter) {
  export_merged(opts(MergeBase::kNf4, DType::kF32), eng_);
  const std::vector<double> want = logits(base_, true, adapter_), got = logits(out_, false),
                            full = logits(base_, false, adapter_);
  EXPECT_CLOSE(got, want, (Tol{1e-5, 1e-4}));
  const auto d = max_abs_diff_and_scale(full, want);
  EXPECT_GT(d[0], 1e-3 * d[1]);  // NF4 vs 16-bit base is visible: the two modes differ
}

TEST_F(ExportCpu, RoundsOnceToTheOutputDtypeAndCastsTheRest) {
  ExportOptions o = opts(MergeBase::k16Bit, DType::kBF16);
  export_merged(o, eng_);
  engine::SafetensorsCheckpoint in(base_), out(out_);
  engine::SafetensorsFile ad(adapter_ + "/adapter_model.safetensors");
  const std::string w = "model.layers.1.mlp.down_proj.weight", p = "base_model.model.model.layers.1.mlp.down_proj.";
  const engine::TensorView W = in.view(w), A = ad.view(p + "lora_A.weight"), B = ad.view(p + "lora_B.weight"),
                           M = out.view(w);
  ASSERT_EQ(M.dtype, DType::kBF16);
  ASSERT_EQ(M.shape, W.shape);
  const int64_t rows = W.shape[0], cols = W.shape[1], r = A.shape[0];
  const float scaling = float(8.0 / 4.0);
  int64_t mismatches = 0;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < r; ++k) acc += double(B.ptr<float>()[i * r + k]) * double(A.ptr<float>()[k * cols + j]);
      const float merged = float(double(W.ptr<float>()[i * cols + j]) + double(scaling) * acc);  // f32
      mismatches += engine::f32_to_bf16(merged) != M.ptr<uint16_t>()[i * cols + j];
    }
  EXPECT_EQ(mismatches, 0);
  for (const std::string n : {"model.norm.weight", "model.embed_tokens.weight", "model.layers.0.input_layernorm.weight"}) {
    const engine::TensorView a = in.view(n), b = out.view(n);
    ASSERT_EQ(b.dtype, DType::kBF16) << n;
    for (int64_t i = 0; i < a.numel(); ++i)
      ASSERT_EQ(b.ptr<uint16_t>()[i], engine::f32_to_bf16(a.ptr<float>()[i])) << n << " [" << i << "]";
  }
  // config.json is the base's, field for field, with the stored dtype updated.
  nlohmann::json cb = nlohmann::json::parse(read_all(base_ + "/config.json")),
                 ce = nlohmann::json::parse(read_all(out_ + "/config.json"));
  EXPECT_EQ(ce["torch_dtype"], "bfloat16");
  cb["torch_dtype"] = "bfloat16";
  EXPECT_EQ(cb, ce);
  EXPECT_EQ(engine::SafetensorsFile(out_ + "/model.safetensors").metadata().at("format"), "pt");
}

TEST_F(ExportCpu, ShardsWithAnIndexThatTheLoaderReads) {
  ExportOptions o = opts(MergeBase::k16Bit, DType::kF32);
  o.out_dir = tmp_.file("single");
  export_merged(o, eng_);
  o.out_dir = out_;
  o.shard_bytes = 40000;  // the embedding (37*64*4 = 9472 B) and the linears (8-32 KB) spread over many shards
  const ExportResult r = export_merged(o, eng_);
  const auto idx = nlohmann::json::parse(read_all(out_ + "/model.safetensors.index.json"));
  std::set<std::string> shards;
  for (auto it = idx["weight_map"].begin(); it != idx["weight_map"].end(); ++it) shards.insert(it->get<std::string>());
  ASSERT_GT(shards.size(), 2u);
  const size_t n = shards.size();
  int64_t total = 0, k = 0;
  for (const std::string& s : shards) {
    char want[64];
    std::snprintf(want, sizeof(want), "model-%05lld-of-%05zu.safetensors", static_cast<long long>(++k), n);
    EXPECT_EQ(s, want);
    engine::SafetensorsFile f(out_ + "/" + s);
    int64_t bytes = 0;
    for (const auto& t : f.names()) bytes += int64_t(f.entry(t).nbytes);
    EXPECT_TRUE(bytes <= o.shard_bytes || f.names().size() == 1) << s << ": " << bytes << " bytes";
    total += bytes;
  }
  EXPECT_EQ(idx["metadata"]["total_size"].get<int64_t>(), total);
  EXPECT_EQ(r.total_bytes, total);
  EXPECT_EQ(idx["weight_map"].size(), engine::SafetensorsCheckpoint(base_).names().size());
  EXPECT_FALSE(fs::exists(out_ + "/model.safetensors"));
  EXPECT_EQ(r.files.size(), n + 2);  // shards, index, config.json
  EXPECT_EQ(logits(out_, false), logits(tmp_.file("single"), false));  // same values, however stored
}

TEST_F(ExportCpu, CopiesTokenizerAndGenerationFilesThatExist) {
  const std::vector<std::string> files = {"tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                                          "special_tokens_map.json"};
  for (const auto& f : files) engine::write_file_atomic(base_ + "/" + f, "contents of " + f + std::string(1, '\0'));
  engine::write_file_atomic(base_ + "/unrelated.txt", "x");
  const ExportResult r = export_merged(opts(MergeBase::kNf4, DType::kBF16), eng_);
  for (const auto& f : files) EXPECT_EQ(read_all(out_ + "/" + f), read_all(base_ + "/" + f)) << f;
  EXPECT_FALSE(fs::exists(out_ + "/generation_config.json"));  // the base has none
  EXPECT_FALSE(fs::exists(out_ + "/unrelated.txt"));
  EXPECT_EQ(r.files.size(), files.size() + 2);
}

TEST_F(ExportCpu, AllLinearStringAndSubsetsOfTargets) {
  make_adapter(adapter_, 2, 3, {"v_proj", "down_proj"});
  ExportOptions o = opts(MergeBase::k16Bit, DType::kF32);
  EXPECT_EQ(export_merged(o, eng_).num_merged, 2 * 2);
  EXPECT_CLOSE(logits(out_, false), logits(base_, false, adapter_), (Tol{1e-5, 1e-4}));
  // peft also writes target_modules as the string "all-linear".
  make_adapter(adapter_, 2, 3, {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"});
  auto c = nlohmann::json::parse(read_all(adapter_ + "/adapter_config.json"));
  c["target_modules"] = "all-linear";
  engine::write_file_atomic(adapter_ + "/adapter_config.json", c.dump());
  o.force = true;
  EXPECT_EQ(export_merged(o, eng_).num_merged, 2 * 7);
}

TEST_F(ExportCpu, ErrorsNameTheProblemAndLeaveNoFolder) {
  const std::vector<std::string> before = top_entries();
  ExportOptions o = opts(MergeBase::kNf4, DType::kBF16);
  o.adapter_dir = tmp_.file("no_adapter");
  EXPECT_NE(error_of(o).find("no_adapter/adapter_config.json: cannot open"), std::string::npos) << error_of(o);

  // adapter_config.json says r = 8, the tensors are r = 4.
  auto c = nlohmann::json::parse(read_all(adapter_ + "/adapter_config.json"));
  auto edit = [&](const std::string& key, const nlohmann::json& v) {
    auto e = c;
    e[key] = v;
    engine::write_file_atomic(adapter_ + "/adapter_config.json", e.dump());
    return error_of(opts(MergeBase::kNf4, DType::kBF16));
  };
  std::string e = edit("r", 8);
  EXPECT_NE(e.find("lora_A.weight has shape (4,64), expected (8,64)"), std::string::npos) << e;
  e = edit("r", "4");
  EXPECT_NE(e.find("\"r\" must be a positive integer"), std::string::npos) << e;
  e = edit("use_dora", true);
  EXPECT_NE(e.find("use_dora = true is not supported"), std::string::npos) << e;
  e = edit("rank_pattern", {{"q_proj", 8}});
  EXPECT_NE(e.find("rank_pattern"), std::string::npos) << e;
  e = edit("target_modules", {"q_proj", "lm_head"});
  EXPECT_NE(e.find("target module 'lm_head' is not a Gemma-2 linear"), std::string::npos) << e;
  e = edit("target_modules", ".*proj");
  EXPECT_NE(e.find("no regular expressions"), std::string::npos) << e;
  e = edit("target_modules", nlohmann::json::array({"q_proj"}));  // the file has tensors for all seven
  EXPECT_NE(e.find("has 28 tensors but this LoRA config expects 4"), std::string::npos) << e;
  e = edit("lora_alpha", nullptr);
  EXPECT_NE(e.find("\"lora_alpha\" must be a number"), std::string::npos) << e;
  engine::write_file_atomic(adapter_ + "/adapter_config.json", c.dump());

  ExportOptions bad = opts(MergeBase::kNf4, DType::kF64);
  EXPECT_NE(error_of(bad).find("output dtype must be f32, f16 or bf16"), std::string::npos);
  bad = opts(MergeBase::kNf4, DType::kBF16);
  bad.shard_bytes = 0;
  EXPECT_NE(error_of(bad).find("shard size must be positive"), std::string::npos);
  bad = opts(MergeBase::kNf4, DType::kBF16);
  bad.model_dir = tmp_.file("nothing");
  EXPECT_NE(error_of(bad).find("nothing/config.json"), std::string::npos) << error_of(bad);
  EXPECT_EQ(top_entries(), before);
}

TEST_F(ExportCpu, RefusesAnExistingFolderUnlessForced) {
  fs::create_directories(out_);
  engine::write_file_atomic(out_ + "/keep.txt", "mine");
  ExportOptions o = opts(MergeBase::k16Bit, DType::kBF16);
  std::string e = error_of(o);
  EXPECT_NE(e.find("exists and is not empty (pass --force to replace it)"), std::string::npos) << e;
  EXPECT_EQ(read_all(out_ + "/keep.txt"), "mine");
  o.force = true;
  export_merged(o, eng_);
  EXPECT_FALSE(fs::exists(out_ + "/keep.txt"));  // replaced, not merged into
  EXPECT_TRUE(fs::exists(out_ + "/model.safetensors"));
  // An empty folder is fine without --force; the base folder itself never is.
  fs::remove_all(out_);
  fs::create_directories(out_);
  o.force = false;
  export_merged(o, eng_);
  o.out_dir = base_ + "/";
  o.force = true;
  e = error_of(o);
  EXPECT_NE(e.find("is the base model or the adapter folder"), std::string::npos) << e;
  engine::write_file_atomic(tmp_.file("a_file"), "x");
  o.out_dir = tmp_.file("a_file");
  e = error_of(o);
  EXPECT_NE(e.find("exists and is not a folder"), std::string::npos) << e;
}

TEST_F(ExportCpu, AFailureHalfwayLeavesNothingBehind) {
  const std::vector<std::string> before = top_entries();
  ExportOptions o = opts(MergeBase::kNf4, DType::kBF16);
  o.shard_bytes = 40000;
  int64_t seen = 0;
  o.on_tensor = [&](const std::string& name, int64_t i, int64_t n) {
    EXPECT_EQ(i, seen++);
    EXPECT_EQ(n, 2 * 11 + 2);
    if (i == 15) throw engine::Error("interrupted at " + name);  // after some shards are complete
  };
  EXPECT_NE(error_of(o).find("interrupted at model.layers.1."), std::string::npos);
  EXPECT_EQ(top_entries(), before);  // no out, no temporary folder
  // The same failure with --force over an existing export keeps the old export intact.
  o.on_tensor = nullptr;
  export_merged(o, eng_);
  const std::string index = read_all(out_ + "/model.safetensors.index.json");
  o.shard_bytes = 1 << 30;
  o.force = true;
  o.on_tensor = [](const std::string&, int64_t i, int64_t) {
    if (i == 3) throw engine::Error("interrupted");
  };
  EXPECT_NE(error_of(o).find("interrupted"), std::string::npos);
  EXPECT_EQ(read_all(out_ + "/model.safetensors.index.json"), index);
  EXPECT_FALSE(fs::exists(out_ + "/model.safetensors"));
  std::vector<std::string> after = before;
  after.push_back("out");
  std::sort(after.begin(), after.end());
  EXPECT_EQ(top_entries(), after);
}

}  // namespace
