// tests/models/bnb_checkpoint_cpu_test.cpp (label cpu): bitsandbytes 4-bit checkpoints (models/bnb_checkpoint.h).
// A random dense checkpoint is written in bnb form by write_bnb_checkpoint; loading it must give the NF4 arrays
// byte for byte and the logits bit for bit that quantizing the dense checkpoint at load gives; a dense load
// dequantizes; the export merges into the 4-bit base; every malformed input is an error naming the tensor.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "engine/safetensors.h"
#include "models/bnb_checkpoint.h"
#include "models/export.h"
#include "models/gemma2.h"
#include "models/gemma2_random.h"
#include "tests/models/model_test_util.h"
#include "tests/test_util.h"

namespace {

namespace fs = std::filesystem;
using namespace models;

const char* const kTargets[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
const std::string kW = "model.layers.1.mlp.down_proj.weight";  // the weight the error tests break
const std::string kQs = kW + ".quant_state.bitsandbytes__nf4";

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// A checkpoint's tensors as owned host copies, editable before they are written again.
using TensorList = std::vector<std::pair<std::string, Tensor>>;

class BnbCpu : public ::testing::Test {
 protected:
  void SetUp() override {
    // F*D = 320*64 = 320 blocks: two absmax2 chunks, the second partial.
    cfg_ = tiny_config(/*D*/ 64, /*F*/ 320, /*L*/ 2, /*H*/ 2, /*KV*/ 1, /*HD*/ 32, /*V*/ 37);
    cfg_.sliding_window = 3;
    fs::create_directories(dense_);
    write_random_checkpoint(dense_, cfg_, DType::kBF16, RandomInit{7, 0.1, 0.2});
    write_bnb_checkpoint(dense_, bnb_, DType::kBF16, eng_);
  }

  Gemma2Model load(const std::string& dir, DType dt, bool nf4, std::vector<std::string>* log = nullptr) {
    Gemma2Options o;
    o.compute_dtype = dt;
    o.quantize_nf4 = nf4;
    if (log) o.log = [log](const std::string& s) { log->push_back(s); };
    return Gemma2Model::load(dir, eng_, o);
  }

  std::vector<uint8_t> logit_bytes(Gemma2Model& m, const LoraAdapters* lora = nullptr) {
    if (lora) m.attach_lora(lora, 0);
    const std::vector<int32_t> ids = {2, 7, 3, 9, 1, 2, 5, 8, 30, 36}, mask(10, 1);
    return test::host_bytes(eng_, m.logits(make_batch(eng_, 2, 5, ids, mask, ids)));
  }

  TensorList read_tensors(const std::string& dir) {
    engine::SafetensorsCheckpoint ck(dir);
    TensorList out;
    for (const std::string& n : ck.names()) {
      const engine::TensorView v = ck.view(n);
      Tensor h = eng_.empty_host(v.shape, v.dtype);
      std::memcpy(h.data(), v.data, v.nbytes());
      out.emplace_back(n, h);
    }
    return out;
  }

  // A copy of the bnb checkpoint with its tensors (and optionally its config) edited; returns the folder.
  std::string tampered(const std::function<void(TensorList&)>& edit,
                       const std::function<void(nlohmann::json&)>& edit_config = nullptr) {
    const std::string dir = tmp_.file("tampered" + std::to_string(++n_tampered_));
    fs::create_directories(dir);
    TensorList t = read_tensors(bnb_);
    edit(t);
    std::vector<std::pair<std::string, engine::TensorView>> views;
    for (auto& [n, v] : t) views.emplace_back(n, v.view());
    engine::write_safetensors(dir + "/model.safetensors", views);
    nlohmann::json cj = nlohmann::json::parse(read_all(bnb_ + "/config.json"));
    if (edit_config) edit_config(cj);
    engine::write_file_atomic(dir + "/config.json", cj.dump());
    return dir;
  }

  // Replaces the quant state JSON of kW.
  std::function<void(TensorList&)> set_quant_state(const std::string& json, const std::string& key = kQs) {
    return [this, json, key](TensorList& t) {
      for (auto& [n, v] : t)
        if (n == kQs) {
          n = key;
          v = eng_.empty_host({int64_t(json.size())}, DType::kU8);
          std::memcpy(v.data(), json.data(), json.size());
        }
    };
  }
  std::string quant_state_json() {
    return std::string(static_cast<const char*>(engine::SafetensorsCheckpoint(bnb_).view(kQs).data),
                       engine::SafetensorsCheckpoint(bnb_).view(kQs).nbytes());
  }

  std::string load_error(const std::string& dir) {
    try {
      load(dir, DType::kF32, true);
    } catch (const engine::Error& e) {
      return e.what();
    }
    return "(no error)";
  }

  Engine eng_{{engine::Backend::kCPU}};
  test::TempDir tmp_;
  std::string dense_ = tmp_.file("dense"), bnb_ = tmp_.file("bnb");
  Gemma2Config cfg_;
  int n_tampered_ = 0;
};

TEST_F(BnbCpu, WritesTransformersLayout) {
  engine::SafetensorsCheckpoint ck(bnb_), dense(dense_);
  EXPECT_EQ(ck.names().size(), dense.names().size() + 5 * 7 * 2);
  for (int64_t i = 0; i < 2; ++i)
    for (const char* t : kTargets) {
      const std::string w = "model.layers." + std::to_string(i) + "." + t + ".weight";
      const engine::TensorView d = dense.view(w);
      const int64_t rows = d.shape[0], cols = d.shape[1], n = rows * cols;
      EXPECT_EQ(ck.view(w).dtype, DType::kU8);
      EXPECT_EQ(ck.view(w).shape, engine::Shape({n / 2, 1})) << w;
      EXPECT_EQ(ck.view(w + ".absmax").dtype, DType::kU8);
      EXPECT_EQ(ck.view(w + ".absmax").shape, engine::Shape({ops::nf4_blocks(n)}));
      EXPECT_EQ(ck.view(w + ".quant_map").shape, engine::Shape({16}));
      EXPECT_EQ(ck.view(w + ".nested_absmax").dtype, DType::kF32);
      EXPECT_EQ(ck.view(w + ".nested_absmax").shape, engine::Shape({ops::nf4_blocks2(n)}));
      EXPECT_EQ(ck.view(w + ".nested_quant_map").shape, engine::Shape({256}));
      const engine::TensorView qs = ck.view(w + ".quant_state.bitsandbytes__nf4");
      const auto j = nlohmann::json::parse(std::string(static_cast<const char*>(qs.data), qs.nbytes()));
      EXPECT_EQ(j["quant_type"], "nf4");
      EXPECT_EQ(j["blocksize"], 64);
      EXPECT_EQ(j["dtype"], "bfloat16");
      EXPECT_EQ(j["shape"], nlohmann::json::array({rows, cols}));
      EXPECT_EQ(j["nested_blocksize"], 256);
      EXPECT_EQ(j["nested_dtype"], "float32");
      EXPECT_GT(j["nested_offset"].get<double>(), 0);
    }
  // Everything else as stored.
  for (const std::string n : {"model.embed_tokens.weight", "model.norm.weight", "model.layers.1.input_layernorm.weight"}) {
    ASSERT_EQ(ck.view(n).dtype, DType::kBF16);
    EXPECT_EQ(std::memcmp(ck.view(n).data, dense.view(n).data, dense.view(n).nbytes()), 0) << n;
  }
  const auto cj = nlohmann::json::parse(read_all(bnb_ + "/config.json"));
  EXPECT_EQ(cj["quantization_config"]["quant_method"], "bitsandbytes");
  EXPECT_EQ(cj["quantization_config"]["bnb_4bit_quant_type"], "nf4");
  EXPECT_EQ(cj["quantization_config"]["bnb_4bit_use_double_quant"], true);
  EXPECT_EQ(cj["quantization_config"]["bnb_4bit_compute_dtype"], "bfloat16");
  EXPECT_TRUE(Gemma2Config::from_json_file(bnb_ + "/config.json").bnb_4bit);
  EXPECT_FALSE(Gemma2Config::from_json_file(dense_ + "/config.json").bnb_4bit);
  // to_json round-trips the flag.
  Gemma2Config c = cfg_;
  c.bnb_4bit = true;
  engine::write_file_atomic(tmp_.file("config.json"), c.to_json());
  EXPECT_TRUE(Gemma2Config::from_json_file(tmp_.file("config.json")).bnb_4bit);
}

TEST_F(BnbCpu, LoadTakesTheArraysAsTheyAreAndMatchesQuantizingAtLoad) {
  for (DType dt : {DType::kBF16, DType::kF32}) {  // bf16 -> f32 is exact: the same quantization either way
    Gemma2Model from_bnb = load(bnb_, dt, true), from_dense = load(dense_, dt, true);
    test::expect_same_nf4_arrays(eng_, from_bnb, eng_, from_dense);
    const auto a = from_bnb.nf4_weights();
    ASSERT_EQ(a.size(), 14u);
    // The checkpoint's bytes are what was loaded (not a requantization that happens to agree).
    engine::SafetensorsCheckpoint ck(bnb_);
    const engine::TensorView packed = ck.view(kW);
    const auto* p = static_cast<const uint8_t*>(packed.data);
    EXPECT_EQ(test::host_bytes(eng_, a.back().second->packed), std::vector<uint8_t>(p, p + packed.nbytes()));
    EXPECT_EQ(logit_bytes(from_bnb), logit_bytes(from_dense)) << engine::dtype_name(dt);
  }
}

TEST_F(BnbCpu, DenseLoadDequantizesToTheComputeDtypeAndSaysSo) {
  std::vector<std::string> log;
  Gemma2Model dense_model = load(bnb_, DType::kF32, false, &log), nf4_model = load(bnb_, DType::kF32, true);
  ASSERT_EQ(log.size(), 1u);
  EXPECT_NE(log[0].find("14 NF4 linear weights dequantized to f32"), std::string::npos) << log[0];
  EXPECT_TRUE(dense_model.nf4_weights().empty());
  // The NF4 model dequantizes the same arrays per call in f32: the same weights, the same logits.
  EXPECT_EQ(logit_bytes(dense_model), logit_bytes(nf4_model));
  // Full fine-tuning of the dequantized base: the linears are trainable parameters.
  Gemma2Options o;
  o.train_base = true;
  o.log = [](const std::string&) {};
  Gemma2Model full = Gemma2Model::load(bnb_, eng_, o);
  int64_t with_grad = 0;
  for (Param* p : full.parameters()) with_grad += p->grad.defined() && p->name.find("_proj") != std::string::npos;
  EXPECT_EQ(with_grad, 14);
  // A dense checkpoint says nothing.
  log.clear();
  load(dense_, DType::kF32, false, &log);
  EXPECT_TRUE(log.empty());
}

TEST_F(BnbCpu, ExportMergesIntoTheFourBitBase) {
  LoraSpec s;
  s.r = 4;
  s.alpha = 8;
  s.targets = {"q_proj", "v_proj", "down_proj"};  // the other linears are written dequantized, unmerged
  test::write_random_adapter(cfg_, s, 11, 0.15f, tmp_.file("adapter"), dense_);
  ExportOptions o;
  o.adapter_dir = tmp_.file("adapter");
  o.out_dtype = DType::kF32;
  o.compute_dtype = DType::kBF16;  // the dense base is quantized from bf16, as the bnb one was
  o.model_dir = dense_;
  o.out_dir = tmp_.file("from_dense");
  export_merged(o, eng_);
  o.model_dir = bnb_;
  o.out_dir = tmp_.file("from_bnb");
  o.base = MergeBase::k16Bit;  // no 16-bit original: the 4-bit base either way
  const ExportResult r = export_merged(o, eng_);
  EXPECT_EQ(r.num_merged, 2 * 3);
  // Merged linears: as from the dense base quantized the same way. The others: the dequantized 4-bit weights
  // (the dense base's export copies its 16-bit originals instead).
  engine::SafetensorsCheckpoint a(tmp_.file("from_bnb")), b(tmp_.file("from_dense"));
  ASSERT_EQ(a.names(), b.names());  // no quant-state tensors
  Gemma2Model dequantized = load(bnb_, DType::kF32, false, nullptr);
  std::map<std::string, const Param*> params;
  for (const Param* p : dequantized.parameters()) params[p->name] = p;
  int64_t unmerged = 0;
  for (const std::string& n : a.names()) {
    ASSERT_EQ(a.view(n).shape, b.view(n).shape) << n;
    ASSERT_EQ(a.view(n).dtype, DType::kF32) << n;
    const bool merged = n.find("q_proj") != std::string::npos || n.find("v_proj") != std::string::npos ||
                        n.find("down_proj") != std::string::npos;
    if (merged || n.find("_proj") == std::string::npos) {
      EXPECT_EQ(std::memcmp(a.view(n).data, b.view(n).data, b.view(n).nbytes()), 0) << n;
    } else {
      ++unmerged;
      EXPECT_EQ(std::memcmp(a.view(n).data, params.at(n)->value.data(), b.view(n).nbytes()), 0) << n;
      EXPECT_NE(std::memcmp(a.view(n).data, b.view(n).data, b.view(n).nbytes()), 0) << n;
    }
  }
  EXPECT_EQ(unmerged, 2 * 4);
  const auto cj = nlohmann::json::parse(read_all(tmp_.file("from_bnb") + "/config.json"));
  EXPECT_FALSE(cj.contains("quantization_config"));
  EXPECT_EQ(cj["torch_dtype"], "float32");
  // The export is the 4-bit base + adapter.
  LoraAdapters lora(cfg_, lora_spec_from_peft(o.adapter_dir), eng_);
  lora.load_peft(o.adapter_dir);
  Gemma2Model merged = load(tmp_.file("from_bnb"), DType::kF32, false), base = load(bnb_, DType::kF32, true);
  const Tensor lm = merged.logits(make_batch(eng_, 1, 4, {2, 5, 9, 30}, {}, {2, 5, 9, 30}));
  base.attach_lora(&lora, 0);
  const Tensor lb = base.logits(make_batch(eng_, 1, 4, {2, 5, 9, 30}, {}, {2, 5, 9, 30}));
  std::vector<double> vm, vb;
  for (int64_t i = 0; i < lm.numel(); ++i) vm.push_back(lm.ptr<float>()[i]), vb.push_back(lb.ptr<float>()[i]);
  EXPECT_CLOSE(vm, vb, (test::Tol{1e-5, 1e-4}));
}

TEST_F(BnbCpu, QuantStateJsonRoundTripsAndReadsPythonsSpelling) {
  BnbQuantState s;
  s.quant_type = "nf4";
  s.blocksize = 64;
  s.dtype = "float16";
  s.shape = {2048, 2304};
  s.nested = true;
  s.nested_blocksize = 256;
  s.nested_dtype = "float32";
  s.nested_offset = engine::bits_f32(0x3c4a1b2d);
  const BnbQuantState t = parse_bnb_quant_state(bnb_quant_state_json(s), "x");
  EXPECT_EQ(t.quant_type, s.quant_type);
  EXPECT_EQ(t.blocksize, s.blocksize);
  EXPECT_EQ(t.dtype, s.dtype);
  EXPECT_EQ(t.shape, s.shape);
  EXPECT_TRUE(t.nested);
  EXPECT_EQ(t.nested_blocksize, 256);
  EXPECT_EQ(t.nested_dtype, "float32");
  EXPECT_EQ(engine::f32_bits(t.nested_offset), 0x3c4a1b2du);
  // json.dumps(...) as bitsandbytes writes it: spaces, and the offset as Python's repr of the f32's double.
  const BnbQuantState p = parse_bnb_quant_state(
      R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [9216, 2304], "nested_blocksize": 256,)"
      R"( "nested_dtype": "float32", "nested_offset": 0.012345678173005581})",
      "x");
  EXPECT_EQ(p.shape, (std::vector<int64_t>{9216, 2304}));
  EXPECT_EQ(engine::f32_bits(p.nested_offset), 0x3c4a4587u);
  EXPECT_FALSE(parse_bnb_quant_state(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [2, 64]})",
                                     "x").nested);
}

TEST_F(BnbCpu, EveryMalformedCheckpointIsAnErrorNamingTheTensor) {
  auto expect_error = [&](const std::string& dir, std::initializer_list<std::string> needles) {
    const std::string e = load_error(dir);
    for (const std::string& n : needles) EXPECT_NE(e.find(n), std::string::npos) << "want \"" << n << "\" in: " << e;
  };
  auto drop = [](const std::string& name) {
    return [name](TensorList& t) {
      for (size_t i = 0; i < t.size(); ++i)
        if (t[i].first == name) t.erase(t.begin() + long(i));
    };
  };
  nlohmann::json qs = nlohmann::json::parse(quant_state_json());
  auto with = [&](const char* key, nlohmann::json v) {
    nlohmann::json j = qs;
    if (v.is_null()) j.erase(key);
    else j[key] = v;
    return j.dump();
  };
  expect_error(tampered(drop(kW + ".absmax")), {kW, "without its tensor " + kW + ".absmax"});
  expect_error(tampered(drop(kW + ".nested_absmax")), {kW + ".nested_absmax"});
  expect_error(tampered(drop(kQs)), {"without its quant state " + kQs});
  expect_error(tampered(drop(kW)), {kW, "the packed weight is not"});
  expect_error(tampered(set_quant_state(with("shape", {64, 640}))), {kQs, "[64,640]", "(64,320)"});
  expect_error(tampered(set_quant_state(with("quant_type", "fp4"))), {kQs, "fp4 is not supported"});
  expect_error(tampered(set_quant_state(with("quant_type", "fp4"), kW + ".quant_state.bitsandbytes__fp4")),
               {kW, "fp4 is not supported"});
  expect_error(tampered(set_quant_state(with("blocksize", 128))), {kQs, "blocksize 128 is not supported"});
  expect_error(tampered(set_quant_state(with("nested_blocksize", 128))), {kQs, "nested_blocksize 128"});
  expect_error(tampered(set_quant_state(with("dtype", "int8"))), {kQs, "dtype \"int8\""});
  const std::string full = quant_state_json();
  expect_error(tampered(set_quant_state(full.substr(0, full.size() - 7))), {kQs, "not valid JSON", "truncated?"});
  expect_error(tampered(set_quant_state("[1, 2]")), {kQs, "not a JSON object"});
  {
    nlohmann::json j = qs;
    j.erase("nested_offset");
    j.erase("nested_blocksize");
    j.erase("nested_dtype");
    expect_error(tampered(set_quant_state(j.dump())), {kQs, "not double-quantized"});
  }
  expect_error(tampered(set_quant_state(with("nested_offset", nullptr))), {kQs, "\"nested_offset\" missing"});
  expect_error(tampered([&](TensorList& t) {  // one absmax code short
    for (auto& [n, v] : t)
      if (n == kW + ".absmax") {
        Tensor s = eng_.empty_host({v.numel() - 1}, DType::kU8);
        std::memcpy(s.data(), v.data(), size_t(s.numel()));
        v = s;
      }
  }),
               {"tensor " + kW + ".absmax", "expected u8 with 320 elements"});
  expect_error(tampered([&](TensorList& t) {  // a non-nested (f32) absmax
    for (auto& [n, v] : t)
      if (n == kW + ".absmax") v = eng_.empty_host({320}, DType::kF32);
  }),
               {"tensor " + kW + ".absmax", "has dtype f32"});
  expect_error(tampered([&](TensorList& t) {
    for (auto& [n, v] : t)
      if (n == kW + ".quant_map") v.ptr<float>()[3] = 0.25f;
  }),
               {kW + ".quant_map", "entry 3"});
  expect_error(tampered([&](TensorList& t) {
    for (auto& [n, v] : t)
      if (n == kW + ".nested_quant_map") v.ptr<float>()[200] = 0.5f;
  }),
               {kW + ".nested_quant_map", "entry 200"});
  expect_error(tampered([&](TensorList& t) {  // bnb_4bit_quant_storage=bfloat16: the packed bytes as bf16
    for (auto& [n, v] : t)
      if (n == kW) v = eng_.empty_host({v.numel() / 2, 1}, DType::kBF16);
  }),
               {"tensor " + kW, "must be uint8"});
  // A stray tensor is still refused by the loader.
  expect_error(tampered([&](TensorList& t) { t.emplace_back(kW + ".extra", eng_.empty_host({1}, DType::kU8)); }),
               {"unexpected tensors", kW + ".extra"});
}

TEST_F(BnbCpu, UnsupportedQuantizationConfigsAreRefused) {
  auto expect_error = [&](const std::function<void(nlohmann::json&)>& edit, const std::string& needle) {
    const std::string e = load_error(tampered([](TensorList&) {}, edit));
    EXPECT_NE(e.find(needle), std::string::npos) << "want \"" << needle << "\" in: " << e;
  };
  expect_error([](nlohmann::json& j) { j["quantization_config"]["bnb_4bit_quant_type"] = "fp4"; },
               "bnb_4bit_quant_type fp4 is not supported");
  expect_error([](nlohmann::json& j) { j["quantization_config"].erase("bnb_4bit_quant_type"); },  // transformers: fp4
               "bnb_4bit_quant_type fp4 is not supported");
  expect_error([](nlohmann::json& j) { j["quantization_config"]["bnb_4bit_use_double_quant"] = false; },
               "bnb_4bit_use_double_quant=false is not supported");
  expect_error([](nlohmann::json& j) { j["quantization_config"]["bnb_4bit_quant_storage"] = "bfloat16"; },
               "bnb_4bit_quant_storage \"bfloat16\" is not supported");
  expect_error(
      [](nlohmann::json& j) {
        j["quantization_config"]["load_in_4bit"] = j["quantization_config"]["_load_in_4bit"] = false;
        j["quantization_config"]["load_in_8bit"] = true;
      },
      "8-bit (load_in_8bit) checkpoints are not supported");
  expect_error([](nlohmann::json& j) { j["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}}; },
               "quant_method \"gptq\" is not supported");
  expect_error([](nlohmann::json& j) { j["quantization_config"] = 4; }, "quantization_config must be an object");
  // Without a quantization_config the tensors still say what they are: the checkpoint loads.
  EXPECT_EQ(load_error(tampered([](TensorList&) {}, [](nlohmann::json& j) { j.erase("quantization_config"); })),
            "(no error)");
}

TEST_F(BnbCpu, WriterRefusesItsSourceAShardedFolderAndNonFloatDtypes) {
  try {
    write_bnb_checkpoint(dense_, dense_, DType::kBF16, eng_);
    ADD_FAILURE() << "no error";
  } catch (const engine::Error& e) {
    EXPECT_NE(std::string(e.what()).find("is the source folder"), std::string::npos) << e.what();
  }
  EXPECT_THROW(write_bnb_checkpoint(dense_, tmp_.file("x"), DType::kF64, eng_), engine::Error);
  fs::create_directories(tmp_.file("sharded"));
  engine::write_file_atomic(tmp_.file("sharded") + "/model.safetensors.index.json", "{}");
  EXPECT_THROW(write_bnb_checkpoint(dense_, tmp_.file("sharded"), DType::kBF16, eng_), engine::Error);
  // A bnb source is rewritten with its own arrays.
  write_bnb_checkpoint(bnb_, tmp_.file("again"), DType::kBF16, eng_);
  engine::SafetensorsCheckpoint a(bnb_), b(tmp_.file("again"));
  ASSERT_EQ(a.names(), b.names());
  for (const std::string& n : a.names())
    EXPECT_EQ(std::memcmp(a.view(n).data, b.view(n).data, a.view(n).nbytes()), 0) << n;
}

}  // namespace
