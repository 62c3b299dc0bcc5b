// tests/models/generate_cpu_test.cpp (label cpu): generation on the CPU backend with tiny random Gemma-2 models.
//   KV-cached decoding (Gemma2Model::forward_cached) against the no-cache forward (Gemma2Model::logits on the
//   whole sequence) at every position: f32 and bf16, NF4 + LoRA, a sliding window smaller than the sequence;
//   greedy determinism, seeded sampling, top-k = 1 = greedy, the logits processors against hand-computed
//   cases, stop conditions (config eos, extra stop ids, max tokens, full cache), cache-prefix reuse across
//   chat turns, the chat template, and UTF-8-safe streaming of Japanese text split over byte-fallback tokens.
#include <cmath>
#include <set>

#include "engine/philox.h"
#include "engine/safetensors.h"
#include "models/generate.h"
#include "models/gemma2_random.h"
#include "tests/engine/tiny_tokenizer.h"
#include "tests/test_util.h"

namespace {

using namespace models;
using engine::ChatMessage;
using engine::ChatRole;

// Odd sizes, GQA 2, HD != D/H, window 3 on the sliding layers 0 and 2 (inside T = 11).
Gemma2Config small_config(int64_t vocab = 41) {
  Gemma2Config c = tiny_config(/*D*/ 24, /*F*/ 40, /*L*/ 3, /*H*/ 4, /*KV*/ 2, /*HD*/ 8, vocab);
  c.sliding_window = 3;
  return c;
}

// Larger weights than the default init so logits are well separated (greedy choices are not near-ties), and
// norm weights (scale 1 + w) large enough that the layers, not the tied embedding's echo of the last input
// token, decide: greedy output then varies instead of repeating one token (checked in the greedy test).
const RandomInit kInit{1, 0.6, 2.0};

std::vector<double> host_values(Engine& eng, const Tensor& t) {
  Tensor h = eng.empty_host(t.shape(), t.dtype());
  eng.copy(h, t);
  eng.synchronize();
  std::vector<double> v(size_t(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = engine::load_f64(h.data(), h.dtype(), int64_t(i));
  return v;
}

// Random adapters on every target (B non-zero, so they change the output).
std::unique_ptr<LoraAdapters> random_lora(Gemma2Model& m, Engine& eng) {
  LoraSpec ls;
  ls.r = 2;
  ls.dropout = 0.3;  // must be inactive in generation
  auto lora = std::make_unique<LoraAdapters>(m.config(), ls, eng);
  Tensor& p = lora->params();
  for (int64_t i = 0; i < p.numel(); ++i) p.ptr<float>()[i] = 0.3f * engine::philox_normal(3, 0, uint64_t(i));
  return lora;
}

struct DecodeCase {
  DType dtype;
  bool qlora;
};

class KvCacheDecode : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(KvCacheDecode, EqualsFullForwardAtEveryPosition) {
  const DecodeCase cs = GetParam();
  test::TempDir tmp;
  const Gemma2Config c = small_config();
  write_random_checkpoint(tmp.path(), c, DType::kF32, kInit);
  Engine eng({engine::Backend::kCPU});
  Gemma2Options o;
  o.compute_dtype = cs.dtype;
  o.quantize_nf4 = cs.qlora;
  Gemma2Model m = Gemma2Model::load(tmp.path(), eng, o);
  std::unique_ptr<LoraAdapters> lora;
  if (cs.qlora) {
    lora = random_lora(m, eng);
    m.attach_lora(lora.get(), 5);
  }
  const std::vector<int32_t> ids = {2, 17, 5, 33, 8, 40, 12, 1, 26, 9, 30};
  const int64_t T = int64_t(ids.size()), V = c.vocab_size;
  const std::vector<double> full = host_values(eng, m.logits(make_batch(eng, 1, T, ids, {}, ids)));  // (T, V)
  auto row = [&](int64_t t) { return std::vector<double>(full.begin() + t * V, full.begin() + (t + 1) * V); };
  // bf16 rounds inside the model, but the CPU backend rounds at the same points per row either way: expect
  // bit-exact equality in both dtypes (tol_for would hide a wrong window by much less than a bf16 ulp).
  for (int64_t prefill : {int64_t(1), int64_t(4), T}) {
    if (cs.qlora) {  // a training step (LoRA dropout 0.3) first: its dropout must not leak into inference
      Tensor loss = eng.empty({1}, DType::kF32);
      eng.zero(loss);
      m.forward_backward(make_batch(eng, 1, T, ids, {}, ids), 1.f, loss, TensorView{});
    }
    KvCache cache(eng, c, cs.dtype, T + 2);
    std::vector<double> got = host_values(eng, m.forward_cached({ids.begin(), ids.begin() + prefill}, cache));
    EXPECT_EQ(cache.len, prefill);
    EXPECT_EQ(got, row(prefill - 1)) << "prefill " << prefill;
    for (int64_t t = prefill; t < T; ++t) {
      got = host_values(eng, m.forward_cached({ids[size_t(t)]}, cache));
      EXPECT_EQ(got, row(t)) << "prefill " << prefill << ", position " << t;
    }
  }
  if (cs.qlora) {  // the adapters must matter, or the test says nothing about them
    m.attach_lora(nullptr, 0);
    KvCache cache(eng, c, cs.dtype, T);
    const std::vector<double> base = host_values(eng, m.forward_cached(ids, cache));
    double diff = 0;
    for (int64_t j = 0; j < V; ++j) diff = std::max(diff, std::fabs(base[size_t(j)] - full[size_t((T - 1) * V + j)]));
    EXPECT_GT(diff, 1e-3);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, KvCacheDecode,
                         ::testing::Values(DecodeCase{DType::kF32, false}, DecodeCase{DType::kBF16, false},
                                           DecodeCase{DType::kF32, true}, DecodeCase{DType::kBF16, true}),
                         [](const ::testing::TestParamInfo<DecodeCase>& i) {
                           return std::string(engine::dtype_name(i.param.dtype)) + (i.param.qlora ? "_qlora" : "");
                         });

TEST(ForwardCached, RejectsBadInput) {
  test::TempDir tmp;
  const Gemma2Config c = small_config();
  write_random_checkpoint(tmp.path(), c, DType::kF32, kInit);
  Engine eng({engine::Backend::kCPU});
  Gemma2Model m = Gemma2Model::load(tmp.path(), eng, Gemma2Options{});
  KvCache cache(eng, c, DType::kF32, 4);
  EXPECT_THROW(m.forward_cached({}, cache), engine::Error);
  EXPECT_THROW(m.forward_cached({2, int32_t(c.vocab_size)}, cache), engine::Error);  // outside the vocab
  EXPECT_THROW(m.forward_cached({2, -1}, cache), engine::Error);
  EXPECT_EQ(cache.len, 0);
  m.forward_cached({2, 3, 4}, cache);
  EXPECT_THROW(m.forward_cached({5, 6}, cache), engine::Error);  // 3 + 2 > 4
  m.forward_cached({5}, cache);
  EXPECT_EQ(cache.len, 4);
  KvCache wrong_dtype(eng, c, DType::kBF16, 4);
  EXPECT_THROW(m.forward_cached({2}, wrong_dtype), engine::Error);
  Gemma2Config other = c;
  other.num_hidden_layers = 2;
  KvCache wrong_layers(eng, other, DType::kF32, 4);
  EXPECT_THROW(m.forward_cached({2}, wrong_layers), engine::Error);
  EXPECT_THROW(KvCache(eng, c, DType::kF32, 0), engine::Error);
}

// ---- token choice ---------------------------------------------------------------------------------------------
TEST(ChooseToken, GreedyAndRepetitionPenaltyAsTransformers) {
  SamplingParams s;
  EXPECT_EQ(choose_token({0.5, 2.0, 2.0, -1.0}, {}, s, 0.9), 1);  // first maximum
  s.repetition_penalty = 2.0;
  // Seen 1 (2.0 -> 1.0) and 3 (-1.0 -> -2.0, negative logits are multiplied): 2 wins.
  EXPECT_EQ(choose_token({0.5, 2.0, 1.5, -1.0}, {1, 3, 1}, s, 0.0), 2);
  // A penalised negative logit gets more negative, never better: 0 (-0.5 -> -1.0) loses to 1 (-0.8).
  EXPECT_EQ(choose_token({-0.5, -0.8}, {0}, s, 0.0), 1);
  s.repetition_penalty = 0;
  EXPECT_THROW(choose_token({1.0}, {}, s, 0.0), engine::Error);
}

TEST(ChooseToken, SamplingFollowsTheFilteredSoftmax) {
  const std::vector<double> logits = {std::log(0.1), std::log(0.2), std::log(0.3), std::log(0.4)};
  SamplingParams s;
  s.temperature = 1.0;
  // Inverse CDF over p = (.1 .2 .3 .4): u in [0,.1) -> 0, [.1,.3) -> 1, [.3,.6) -> 2, [.6,1) -> 3.
  EXPECT_EQ(choose_token(logits, {}, s, 0.05), 0);
  EXPECT_EQ(choose_token(logits, {}, s, 0.25), 1);
  EXPECT_EQ(choose_token(logits, {}, s, 0.55), 2);
  EXPECT_EQ(choose_token(logits, {}, s, 0.999), 3);
  s.top_k = 2;  // keeps 2 and 3: p = (3/7, 4/7)
  EXPECT_EQ(choose_token(logits, {}, s, 0.0), 2);
  EXPECT_EQ(choose_token(logits, {}, s, 0.42), 2);
  EXPECT_EQ(choose_token(logits, {}, s, 0.44), 3);
  s.top_k = 0;
  s.top_p = 0.65;  // ascending cumulative .1 .3 .6 1.0: drop those <= .35, i.e. 0 and 1
  EXPECT_EQ(choose_token(logits, {}, s, 0.0), 2);
  s.top_p = 0.75;  // drop those <= .25: only 0
  EXPECT_EQ(choose_token(logits, {}, s, 0.0), 1);
  s.top_p = 1e-6;  // the most likely token always stays
  EXPECT_EQ(choose_token(logits, {}, s, 0.0), 3);
  s.top_p = 1.0;
  s.temperature = 1e-3;  // a tiny temperature concentrates all mass on the maximum
  EXPECT_EQ(choose_token(logits, {}, s, 0.5), 3);
  s.top_k = -1;
  EXPECT_THROW(choose_token(logits, {}, s, 0.0), engine::Error);
}

// ---- generation ---------------------------------------------------------------------------------------------
class GenerateCpu : public ::testing::Test {
 protected:
  void SetUp() override {
    cfg_ = small_config();
    write_random_checkpoint(tmp_.path(), cfg_, DType::kF32, kInit);
    model_ = std::make_unique<Gemma2Model>(Gemma2Model::load(tmp_.path(), eng_, Gemma2Options{}));
  }
  std::vector<int32_t> run(const GenerateOptions& o, int64_t max_len = 64) {
    Generator g(*model_, max_len);
    return g.generate(prompt_, o).ids;
  }
  test::TempDir tmp_;
  Engine eng_{{engine::Backend::kCPU}};
  Gemma2Config cfg_;
  std::unique_ptr<Gemma2Model> model_;
  const std::vector<int32_t> prompt_ = {2, 17, 5, 33, 8};
};

TEST_F(GenerateCpu, GreedyIsDeterministicAndEqualsArgmaxOfTheFullForward) {
  GenerateOptions o;
  o.max_new_tokens = 12;
  o.ignore_eos = true;
  const std::vector<int32_t> a = run(o), b = run(o);
  ASSERT_EQ(a.size(), 12u);
  EXPECT_EQ(a, b);
  // Teacher forcing: each generated token is the argmax of the no-cache forward on the sequence before it.
  std::vector<int32_t> seq(prompt_);
  seq.insert(seq.end(), a.begin(), a.end());
  const int64_t T = int64_t(seq.size()), V = cfg_.vocab_size;
  const std::vector<double> full = host_values(eng_, model_->logits(make_batch(eng_, 1, T, seq, {}, seq)));
  for (size_t t = 0; t < a.size(); ++t) {
    const auto rowb = full.begin() + (int64_t(prompt_.size() + t) - 1) * V;
    EXPECT_EQ(std::max_element(rowb, rowb + V) - rowb, a[t]) << "token " << t;
  }
  std::set<int32_t> distinct(a.begin(), a.end());
  EXPECT_GT(distinct.size(), 2u) << "a constant output would make the comparisons weak";
}

TEST_F(GenerateCpu, SamplingIsReproducibleAndSeedDependent) {
  GenerateOptions o;
  o.max_new_tokens = 20;
  o.ignore_eos = true;
  o.sampling.temperature = 1.5;
  o.sampling.seed = 11;
  const std::vector<int32_t> a = run(o), b = run(o);
  EXPECT_EQ(a, b);
  o.sampling.seed = 12;
  EXPECT_NE(run(o), a);
  o.sampling.top_k = 1;  // only the argmax survives: sampling equals greedy whatever the seed
  GenerateOptions greedy;
  greedy.max_new_tokens = 20;
  greedy.ignore_eos = true;
  EXPECT_EQ(run(o), run(greedy));
  // Repetition penalty changes greedy output on this model (it repeats tokens otherwise).
  greedy.sampling.repetition_penalty = 3.0;
  const std::vector<int32_t> pen = run(greedy);
  greedy.sampling.repetition_penalty = 1.0;
  EXPECT_NE(pen, run(greedy));
}

TEST_F(GenerateCpu, StopConditions) {
  GenerateOptions o;
  o.max_new_tokens = 7;
  o.ignore_eos = true;
  Generator g(*model_, 64);
  GenerateResult r = g.generate(prompt_, o);
  EXPECT_EQ(r.ids.size(), 7u);
  EXPECT_EQ(r.reason, StopReason::kMaxTokens);
  EXPECT_EQ(r.prompt_tokens, int64_t(prompt_.size()));
  const std::vector<int32_t> ref = r.ids;
  // An extra stop id: generation stops before it, at its first occurrence.
  const size_t k = 3;
  const int32_t stop = ref[k];
  const size_t first = size_t(std::find(ref.begin(), ref.end(), stop) - ref.begin());
  o.ignore_eos = false;
  o.stop_ids = {stop};
  r = Generator(*model_, 64).generate(prompt_, o);
  EXPECT_EQ(r.reason, StopReason::kStopId);
  EXPECT_EQ(r.stop_id, stop);
  EXPECT_EQ(r.ids, std::vector<int32_t>(ref.begin(), ref.begin() + long(first)));
  // ignore_eos ignores every stop id.
  o.ignore_eos = true;
  EXPECT_EQ(Generator(*model_, 64).generate(prompt_, o).ids, ref);
  // The config's eos ids stop generation: the same weights with eos_token_id = that token.
  test::TempDir tmp2;
  Gemma2Config c2 = cfg_;
  c2.eos_token_ids = {99, stop};
  write_random_checkpoint(tmp2.path(), c2, DType::kF32, kInit);
  Gemma2Model m2 = Gemma2Model::load(tmp2.path(), eng_, Gemma2Options{});
  GenerateOptions plain;
  plain.max_new_tokens = 7;
  r = Generator(m2, 64).generate(prompt_, plain);
  EXPECT_EQ(r.reason, StopReason::kStopId);
  EXPECT_EQ(r.ids, std::vector<int32_t>(ref.begin(), ref.begin() + long(first)));
  // A full cache: prompt 5 + 3 fed tokens fill max_len 8; the 4th token comes from the last position.
  r = Generator(*model_, 8).generate(prompt_, o);
  EXPECT_EQ(r.reason, StopReason::kContextFull);
  EXPECT_EQ(r.ids, std::vector<int32_t>(ref.begin(), ref.begin() + 4));
  EXPECT_THROW(Generator(*model_, 5).generate(prompt_, o), engine::Error);  // no room after the prompt
  EXPECT_THROW(Generator(*model_, 64).generate({}, o), engine::Error);
  o.max_new_tokens = 0;
  EXPECT_THROW(Generator(*model_, 64).generate(prompt_, o), engine::Error);
}

TEST_F(GenerateCpu, CacheReuseEqualsAFreshGenerator) {
  GenerateOptions o;
  o.max_new_tokens = 6;
  o.ignore_eos = true;
  Generator g(*model_, 64);
  const GenerateResult r1 = g.generate(prompt_, o);
  // The next turn: the old context, the answer, and new tokens. Only the tail is fed again.
  std::vector<int32_t> ctx(prompt_);
  ctx.insert(ctx.end(), r1.ids.begin(), r1.ids.end());
  ctx.insert(ctx.end(), {7, 19, 4});
  const GenerateResult r2 = g.generate(ctx, o);
  EXPECT_EQ(r2.reused_tokens, int64_t(prompt_.size() + r1.ids.size() - 1));  // the last answer token was never fed
  EXPECT_EQ(r2.prompt_tokens, 4);
  EXPECT_EQ(r2.ids, Generator(*model_, 64).generate(ctx, o).ids);
  // A context that diverges early rewinds the cache; the same context again re-feeds only its last token.
  const std::vector<int32_t> other = {2, 17, 6, 6};
  EXPECT_EQ(g.generate(other, o).reused_tokens, 2);
  const GenerateResult again = g.generate(other, o);
  EXPECT_EQ(again.reused_tokens, 3);
  EXPECT_EQ(again.ids, Generator(*model_, 64).generate(other, o).ids);
}

// ---- template, tokenizer, streaming -------------------------------------------------------------------------
class ChatCpu : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir;
    tok_ = new engine::Tokenizer(engine::Tokenizer::from_file(test::train_tiny_tokenizer(*dir_, "tiny")));
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete dir_;
  }
  static test::TempDir* dir_;
  static engine::Tokenizer* tok_;
};
test::TempDir* ChatCpu::dir_ = nullptr;
engine::Tokenizer* ChatCpu::tok_ = nullptr;

TEST_F(ChatCpu, TemplateRendering) {
  std::vector<ChatMessage> m = {{ChatRole::kUser, "  東京はどこ？\n"}};
  EXPECT_EQ(gemma_chat_prompt(m), "<start_of_turn>user\n東京はどこ？<end_of_turn>\n<start_of_turn>model\n");
  m.push_back({ChatRole::kAssistant, "日本です。"});
  // The conversation so far renders exactly as a training record (engine::ChatTemplate).
  const std::string record = engine::ChatTemplate().render(m).text;
  m.push_back({ChatRole::kUser, "ありがとう"});
  EXPECT_EQ(gemma_chat_prompt(m), record + "<start_of_turn>user\nありがとう<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_EQ(record, "<start_of_turn>user\n東京はどこ？<end_of_turn>\n<start_of_turn>model\n日本です。<end_of_turn>\n");
  // A system message is folded into the first user turn (Gemma has no system role).
  EXPECT_EQ(gemma_chat_prompt({{ChatRole::kSystem, "丁寧に"}, {ChatRole::kUser, "質問"}}),
            "<start_of_turn>user\n丁寧に\n\n質問<end_of_turn>\n<start_of_turn>model\n");
  const std::vector<int32_t> ids = chat_prompt_ids(*tok_, {{ChatRole::kUser, "hello"}});
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids[0], tok_->bos_id());
  EXPECT_EQ(ids[1], tok_->start_of_turn_id());
  EXPECT_EQ(std::count(ids.begin(), ids.end(), tok_->end_of_turn_id()), 1);
  EXPECT_EQ(tok_->decode(ids), "<start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_THROW(gemma_chat_prompt({}), engine::Error);
  EXPECT_THROW(gemma_chat_prompt({{ChatRole::kUser, "a"}, {ChatRole::kAssistant, "b"}}), engine::Error);
  EXPECT_THROW(gemma_chat_prompt({{ChatRole::kUser, "a"}, {ChatRole::kUser, "b"}}), engine::Error);
}

bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const uint8_t c = uint8_t(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((uint8_t(s[i + k]) & 0xC0) != 0x80) return false;
    i += n;
  }
  return true;
}

TEST_F(ChatCpu, StreamingEmitsOnlyWholeCharacters) {
  // 猫, 犬, 😀 and 鳥 are not in the tiny tokenizer's corpus: they are byte-fallback tokens, 3-4 per character.
  const std::string text = "猫は東京にいます。犬😀と鳥 ok";
  const std::vector<int32_t> ids = tok_->encode(text);
  TextStreamer st(*tok_);
  std::string all;
  int held = 0;
  for (int32_t id : ids) {
    const std::string piece = st.push(id);
    EXPECT_TRUE(valid_utf8(piece)) << "piece after id " << id;
    EXPECT_EQ(piece.find("\xEF\xBF\xBD"), std::string::npos) << "a replacement character was emitted";
    held += piece.empty();
    all += piece;
  }
  all += st.finish();
  EXPECT_EQ(all, text);
  EXPECT_GT(held, 3) << "no character was held back: the byte-fallback path was not exercised";
}

TEST_F(ChatCpu, ChatSessionStreamsAndKeepsTheConversation) {
  test::TempDir tmp;
  const Gemma2Config c = small_config(tok_->vocab_size());
  write_random_checkpoint(tmp.path(), c, DType::kF32, kInit);
  Engine eng({engine::Backend::kCPU});
  Gemma2Model m = Gemma2Model::load(tmp.path(), eng, Gemma2Options{});
  Generator gen(m, 256, tok_);
  const std::vector<int32_t> stops = gen.stop_ids(GenerateOptions{});
  for (int32_t id : {tok_->eos_id(), tok_->end_of_turn_id()})
    EXPECT_TRUE(std::count(stops.begin(), stops.end(), id)) << id;
  ChatSession chat(gen, *tok_, /*raw=*/false);
  GenerateOptions o;
  o.max_new_tokens = 12;
  std::string streamed;
  const GenerateResult r1 = chat.ask("東京はどこ？", o, [&](const std::string& s) { streamed += s; });
  EXPECT_EQ(streamed, r1.text);
  EXPECT_EQ(r1.text, tok_->decode(r1.ids));
  ASSERT_EQ(chat.messages().size(), 2u);
  EXPECT_EQ(chat.messages()[1].content, r1.text);
  const GenerateResult r2 = chat.ask("ありがとう", o);
  EXPECT_GT(r2.reused_tokens, 10);  // the first turn stays in the cache
  ASSERT_EQ(chat.messages().size(), 4u);
  // The second turn's context is the full two-turn template; a fresh generator on it gives the same answer.
  std::vector<ChatMessage> conv(chat.messages().begin(), chat.messages().begin() + 3);
  Generator fresh(m, 256, tok_);
  EXPECT_EQ(fresh.generate(chat_prompt_ids(*tok_, conv), o).ids, r2.ids);
  // Raw mode: <bos> + text, no history.
  ChatSession raw(gen, *tok_, /*raw=*/true);
  const GenerateResult rr = raw.ask("hello", o);
  std::vector<int32_t> ctx{tok_->bos_id()};
  const auto body = tok_->encode("hello");
  ctx.insert(ctx.end(), body.begin(), body.end());
  EXPECT_EQ(rr.ids, Generator(m, 256, tok_).generate(ctx, o).ids);
  EXPECT_TRUE(raw.messages().empty());
}

}  // namespace
