// tests/engine/chat_data_cpu_test.cpp: JSONL parsing and its errors, chat templates, tokenization with
// BOS/EOS and truncation (SPEC.md §2.3, §6.2), labels for both loss modes, and the collator (SPEC.md §6.4).
#include "engine/chat_data.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "engine/check.h"
#include "tests/engine/tiny_tokenizer.h"

namespace {

using engine::ChatDataOptions;
using engine::ChatDataset;
using engine::ChatMessage;
using engine::ChatRole;
using engine::ChatTemplate;
using engine::Error;
using engine::kIgnoreLabel;
using engine::LossOn;
using engine::Tokenizer;

constexpr const char* kQA = R"({"messages":[{"role":"user","content":" What is the capital of Japan? "},)"
                            R"({"role":"assistant","content":"東京です。\n"}]})";
constexpr const char* kMulti =
    R"({"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hello"},)"
    R"({"role":"assistant","content":"Hello world"},{"role":"user","content":"富士山は?"},)"
    R"({"role":"assistant","content":"高い山です。"}]})";

std::vector<ChatMessage> msgs(std::initializer_list<std::pair<ChatRole, const char*>> l) {
  std::vector<ChatMessage> out;
  for (const auto& [r, c] : l) out.push_back({r, c});
  return out;
}
constexpr ChatRole kSys = ChatRole::kSystem, kUser = ChatRole::kUser, kAsst = ChatRole::kAssistant;

std::string target_text(const engine::RenderedChat& r) {
  std::string s;
  for (const auto& [b, e] : r.target_spans) s += r.text.substr(b, e - b) + "|";
  return s;
}

class ChatDataTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir;
    tok_ = new Tokenizer(Tokenizer::from_file(test::train_tiny_tokenizer(*dir_, "tiny")));
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete dir_;
  }
  ChatDataOptions opts(const std::string& name, const std::string& jsonl) const {
    ChatDataOptions o;
    o.path = dir_->write(name, jsonl);
    return o;
  }
  // Expects load() to throw an engine::Error whose message contains every one of `parts`.
  void expect_load_error(const ChatDataOptions& o, std::initializer_list<std::string> parts) const {
    try {
      ChatDataset::load(o, *tok_);
      ADD_FAILURE() << "expected engine::Error from " << o.path;
    } catch (const Error& e) {
      for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
  }
  std::vector<int32_t> bos_text_eos(const std::string& text) const {
    std::vector<int32_t> ids{tok_->bos_id()};
    for (int32_t id : tok_->encode(text)) ids.push_back(id);
    ids.push_back(tok_->eos_id());
    return ids;
  }
  static test::TempDir* dir_;
  static Tokenizer* tok_;
};
test::TempDir* ChatDataTest::dir_ = nullptr;
Tokenizer* ChatDataTest::tok_ = nullptr;

// ---- rendering ----------------------------------------------------------------------------------------

TEST(ChatTemplateTest, GemmaSingleTurnTrimsContent) {
  const auto r = ChatTemplate().render(msgs({{kUser, " \n What is X? \t"}, {kAsst, "X.\n\n"}}));
  EXPECT_EQ(r.text, "<start_of_turn>user\nWhat is X?<end_of_turn>\n<start_of_turn>model\nX.<end_of_turn>\n");
  EXPECT_EQ(target_text(r), "X.<end_of_turn>|");
  EXPECT_TRUE(r.ends_with_assistant);
}

TEST(ChatTemplateTest, GemmaSystemGoesBeforeFirstUserOnly) {
  const auto r = ChatTemplate().render(
      msgs({{kSys, " Be brief. "}, {kUser, "Q1"}, {kAsst, "A1"}, {kUser, "Q2"}, {kAsst, "A2"}}));
  EXPECT_EQ(r.text,
            "<start_of_turn>user\nBe brief.\n\nQ1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n"
            "<start_of_turn>user\nQ2<end_of_turn>\n<start_of_turn>model\nA2<end_of_turn>\n");
  EXPECT_EQ(target_text(r), "A1<end_of_turn>|A2<end_of_turn>|");
}

TEST(ChatTemplateTest, GemmaAllowsTrailingUser) {
  const auto r = ChatTemplate().render(msgs({{kUser, "Q1"}, {kAsst, "A1"}, {kUser, "Q2"}}));
  EXPECT_EQ(r.text, "<start_of_turn>user\nQ1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n"
                    "<start_of_turn>user\nQ2<end_of_turn>\n");
  EXPECT_FALSE(r.ends_with_assistant);
}

TEST(ChatTemplateTest, CustomPerPairWithSystemAndBraces) {
  const ChatTemplate t("{system}### Q {{json}}:\n{instruction}\n### A:\n{output}\n");
  EXPECT_FALSE(t.is_gemma());
  const auto r = t.render(msgs({{kSys, "SYS"}, {kUser, " q1 "}, {kAsst, "a1"}, {kUser, "q2"}, {kAsst, " a2 "}}));
  EXPECT_EQ(r.text, "SYS### Q {json}:\nq1\n### A:\na1\nSYS### Q {json}:\nq2\n### A:\na2\n");
  EXPECT_EQ(target_text(r), "a1|a2|");
  // No system message: {system} is empty.
  EXPECT_EQ(t.render(msgs({{kUser, "q"}, {kAsst, "a"}})).text, "### Q {json}:\nq\n### A:\na\n");
}

TEST(ChatTemplateTest, CustomRejectsTrailingUser) {
  EXPECT_THROW(ChatTemplate("{instruction}{output}").render(msgs({{kUser, "q"}, {kAsst, "a"}, {kUser, "q2"}})),
               Error);
}

TEST(ChatTemplateTest, BadTemplatesThrow) {
  for (const char* bad : {"{instruction} {input} {output}", "{instruction} {output", "{instruction} } {output}",
                          "{instruction} only", "{output} only", "{system}{Output}{instruction}"}) {
    EXPECT_THROW(ChatTemplate{bad}, Error) << bad;
  }
  try {
    ChatTemplate("{instruction} {input} {output}");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("{input}"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("{system} {instruction} {output}"), std::string::npos) << e.what();
  }
}

TEST(ChatTemplateTest, TrimIsPythonStrip) {
  EXPECT_EQ(engine::trim_whitespace("\u3000 東京 \n"), "東京");             // ideographic space
  EXPECT_EQ(engine::trim_whitespace("\u00a0x y\u2003\x1f"), "x y");          // NBSP, em space, unit separator
  EXPECT_EQ(engine::trim_whitespace(" \t\r\n\v\f"), "");
  EXPECT_EQ(engine::trim_whitespace("東京"), "東京");
  EXPECT_EQ(engine::trim_whitespace("\u300c東京\u300d"), "\u300c東京\u300d");  // brackets are not spaces
  EXPECT_EQ(engine::trim_whitespace(" \xff\x80 "), "\xff\x80");                 // invalid UTF-8 is kept
}

TEST(ChatTemplateTest, LossOnNames) {
  EXPECT_EQ(engine::loss_on_from_name("all"), LossOn::kAll);
  EXPECT_EQ(engine::loss_on_from_name("assistant"), LossOn::kAssistant);
  EXPECT_STREQ(engine::loss_on_name(LossOn::kAssistant), "assistant");
  EXPECT_THROW(engine::loss_on_from_name("completion"), Error);
}

// ---- loading and tokenization ------------------------------------------------------------------------

TEST_F(ChatDataTest, LossOnAllIsBosTextEos) {
  auto o = opts("qa.jsonl", std::string(kQA) + "\n\n" + kMulti + "\n");
  const ChatDataset d = ChatDataset::load(o, *tok_);
  ASSERT_EQ(d.size(), 2);
  EXPECT_EQ(d.loss_on(), LossOn::kAll);
  const std::string text0 = "<start_of_turn>user\nWhat is the capital of Japan?<end_of_turn>\n"
                            "<start_of_turn>model\n東京です。<end_of_turn>\n";
  EXPECT_EQ(d[0].ids, bos_text_eos(text0));
  EXPECT_EQ(d[0].labels, d[0].ids);  // the notebook: every token a target, the model shifts
  EXPECT_EQ(d[0].line, 1);
  EXPECT_EQ(d[1].line, 3);  // the blank line is ignored but counted
  EXPECT_FALSE(d[0].truncated);
  const auto& s = d.stats();
  EXPECT_EQ(s.records, 2);
  EXPECT_EQ(s.skipped, 0);
  EXPECT_EQ(s.tokens, int64_t(d[0].ids.size() + d[1].ids.size()));
  EXPECT_EQ(s.label_tokens, s.tokens);
  EXPECT_EQ(d.lengths(), (std::vector<int64_t>{int64_t(d[0].ids.size()), int64_t(d[1].ids.size())}));
  const std::string sum = d.summary();
  EXPECT_NE(sum.find(o.path), std::string::npos) << sum;
  EXPECT_NE(sum.find("2 records"), std::string::npos) << sum;
  EXPECT_NE(sum.find("loss on all"), std::string::npos) << sum;
  EXPECT_THROW(d[2], Error);
}

TEST_F(ChatDataTest, CustomTemplateTokens) {
  auto o = opts("custom.jsonl", std::string(kQA) + "\n");
  o.chat_template = "### Instruction:\n{instruction}\n### Response:\n{output}";
  const ChatDataset d = ChatDataset::load(o, *tok_);
  EXPECT_EQ(d[0].ids, bos_text_eos("### Instruction:\nWhat is the capital of Japan?\n### Response:\n東京です。"));
  EXPECT_NE(d.summary().find("template custom"), std::string::npos);
}

TEST_F(ChatDataTest, AssistantLabelsCoverRepliesAndEndOfTurn) {
  auto o = opts("multi.jsonl", std::string(kMulti) + "\n");
  o.loss_on = LossOn::kAssistant;
  const ChatDataset d = ChatDataset::load(o, *tok_);
  const auto& ex = d[0];
  ASSERT_EQ(ex.labels.size(), ex.ids.size());
  EXPECT_EQ(ex.labels.front(), kIgnoreLabel);       // BOS
  EXPECT_EQ(ex.labels.back(), tok_->eos_id());      // ends with the assistant, not truncated
  std::vector<int32_t> targets;
  for (size_t i = 1; i + 1 < ex.ids.size(); ++i) {
    if (ex.labels[i] == kIgnoreLabel) continue;
    EXPECT_EQ(ex.labels[i], ex.ids[i]);
    targets.push_back(ex.ids[i]);
  }
  EXPECT_EQ(tok_->decode(targets), "Hello world<end_of_turn>高い山です。<end_of_turn>");
  EXPECT_EQ(std::count(targets.begin(), targets.end(), tok_->end_of_turn_id()), 2);
  EXPECT_EQ(std::count(targets.begin(), targets.end(), tok_->start_of_turn_id()), 0);
  EXPECT_EQ(d.stats().label_tokens, int64_t(targets.size()) + 1);
  EXPECT_EQ(d.loss_on(), LossOn::kAssistant);
  EXPECT_NE(d.summary().find("loss on assistant"), std::string::npos);
}

TEST_F(ChatDataTest, AssistantLabelsNoEosAfterTrailingUser) {
  auto o = opts("trailing.jsonl", R"({"messages":[{"role":"user","content":"Q"},{"role":"assistant","content":"A"},)"
                                  R"({"role":"user","content":"more?"}]})" "\n");
  o.loss_on = LossOn::kAssistant;
  const ChatDataset d = ChatDataset::load(o, *tok_);
  EXPECT_EQ(d[0].labels.back(), kIgnoreLabel);
  EXPECT_EQ(d[0].ids.back(), tok_->eos_id());
}

TEST_F(ChatDataTest, TruncationKeepsBosAndEos) {
  const std::string text = "<start_of_turn>user\nWhat is the capital of Japan?<end_of_turn>\n"
                           "<start_of_turn>model\n東京です。<end_of_turn>\n";
  const auto full = tok_->encode(text);
  for (LossOn mode : {LossOn::kAll, LossOn::kAssistant}) {
    auto o = opts("trunc.jsonl", std::string(kQA) + "\n" + kQA + "\n");
    o.max_seq_length = 8;
    o.loss_on = mode;
    const ChatDataset d = ChatDataset::load(o, *tok_);
    const auto& ex = d[0];
    ASSERT_EQ(ex.ids.size(), 8u);
    EXPECT_EQ(ex.ids.front(), tok_->bos_id());
    EXPECT_EQ(ex.ids.back(), tok_->eos_id());  // still ends in EOS (SPEC.md §2.3)
    EXPECT_EQ(std::vector<int32_t>(ex.ids.begin() + 1, ex.ids.end() - 1),
              std::vector<int32_t>(full.begin(), full.begin() + 6));  // the head of the text, L - 2 tokens
    EXPECT_TRUE(ex.truncated);
    EXPECT_EQ(d.stats().truncated, 2);
    EXPECT_EQ(d.stats().tokens, 16);
    if (mode == LossOn::kAll) {
      EXPECT_EQ(ex.labels, ex.ids);
    } else {  // the cut text is all prompt, and a cut reply gets no EOS target
      EXPECT_TRUE(std::all_of(ex.labels.begin(), ex.labels.end(), [](int32_t l) { return l == kIgnoreLabel; }));
    }
  }
  // Cut only the final "\n": the reply is whole but the record counts as truncated, so EOS is no target.
  {
    auto o = opts("cut1.jsonl", std::string(kQA) + "\n");
    o.max_seq_length = int64_t(full.size()) + 1;
    o.loss_on = LossOn::kAssistant;
    const ChatDataset d = ChatDataset::load(o, *tok_);
    EXPECT_TRUE(d[0].truncated);
    EXPECT_EQ(d[0].ids.back(), tok_->eos_id());
    EXPECT_EQ(d[0].labels.back(), kIgnoreLabel);
    EXPECT_EQ(d[0].labels[d[0].labels.size() - 2], tok_->end_of_turn_id());
  }
  // Exactly at the limit: not truncated.
  auto o = opts("fit.jsonl", std::string(kQA) + "\n");
  o.max_seq_length = int64_t(full.size()) + 2;
  const ChatDataset d = ChatDataset::load(o, *tok_);
  EXPECT_FALSE(d[0].truncated);
  EXPECT_EQ(d.stats().truncated, 0);
  EXPECT_EQ(d[0].ids, bos_text_eos(text));
}

TEST_F(ChatDataTest, CrlfAndBomAreAccepted) {
  const ChatDataset d = ChatDataset::load(opts("crlf.jsonl", "\xEF\xBB\xBF" + std::string(kQA) + "\r\n" + kQA + "\r\n"), *tok_);
  EXPECT_EQ(d.size(), 2);
  EXPECT_EQ(d[0].ids, d[1].ids);
}

// Every bad record: the message names file:line and the problem.
TEST_F(ChatDataTest, BadRecordsNameFileAndLine) {
  const std::string good = kQA;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"messages": [)", "invalid JSON"},
      {"{\"messages\": [{\"role\": \"user\", \"content\": \"\xff\"}]}", "invalid JSON"},  // not UTF-8
      {R"([1, 2])", "expected a JSON object"},
      {R"({"msgs": []})", "missing \"messages\""},
      {R"({"messages": "hi"})", "\"messages\" must be an array, got string"},
      {R"({"messages": []})", "\"messages\" is empty"},
      {R"({"messages": ["hi"]})", "messages[0] must be an object"},
      {R"({"messages": [{"content": "x"}]})", "messages[0].role must be a string"},
      {R"({"messages": [{"role": 1, "content": "x"}]})", "messages[0].role must be a string"},
      {R"({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]})",
       "messages[1].role is 'bot'; allowed: system, user, assistant"},
      {R"({"messages": [{"role": "user", "content": 5}]})", "messages[0].content must be a string, got number"},
      {R"({"messages": [{"role": "user"}]})", "messages[0].content must be a string, got nothing"},
      {R"({"messages": [{"role": "user", "content": null}]})", "messages[0].content must be a string, got null"},
      {R"({"messages": [{"role": "user", "content": "q"}]})", "no assistant message"},
      {R"({"messages": [{"role": "assistant", "content": "a"}]})", "messages[0] is 'assistant' where 'user'"},
      {R"({"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]})",
       "messages[1] is 'user' where 'assistant'"},
      {R"({"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}]})",
       "messages[1] is a system message"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto o = opts("bad" + std::to_string(i) + ".jsonl", good + "\n\n" + cases[i].first + "\n" + good + "\n");
    expect_load_error(o, {o.path + ":3: ", cases[i].second});
  }
  // Template-specific: a trailing user message under a custom template.
  auto o = opts("bad_pair.jsonl", R"({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"},)"
                                  R"({"role":"user","content":"q2"}]})" "\n");
  o.chat_template = "{instruction}\n{output}";
  expect_load_error(o, {o.path + ":1: ", "ends with a user message"});
}

TEST_F(ChatDataTest, SkipBadLinesCountsAndReports) {
  std::string jsonl = std::string(kQA) + "\n";
  for (int i = 0; i < 7; ++i) jsonl += R"({"messages": []})" "\n";
  jsonl += std::string(kMulti) + "\n";
  auto o = opts("skip.jsonl", jsonl);
  o.skip_bad_lines = true;
  const ChatDataset d = ChatDataset::load(o, *tok_);
  EXPECT_EQ(d.size(), 2);
  EXPECT_EQ(d[1].line, 9);
  const auto& s = d.stats();
  EXPECT_EQ(s.records, 2);
  EXPECT_EQ(s.skipped, 7);
  ASSERT_EQ(s.first_errors.size(), engine::ChatDataStats::kMaxReportedErrors);
  EXPECT_NE(s.first_errors[0].find(o.path + ":2: "), std::string::npos) << s.first_errors[0];
  EXPECT_NE(s.first_errors[4].find(o.path + ":6: "), std::string::npos) << s.first_errors[4];
  EXPECT_NE(d.summary().find("7 skipped"), std::string::npos) << d.summary();
  EXPECT_NE(d.summary().find(o.path + ":2: \"messages\" is empty"), std::string::npos) << d.summary();
  // Without the option the same file fails at the first bad line.
  o.skip_bad_lines = false;
  expect_load_error(o, {o.path + ":2: "});
}

TEST_F(ChatDataTest, EmptyDatasetIsAnError) {
  expect_load_error(opts("empty.jsonl", ""), {"empty.jsonl", "no records"});
  expect_load_error(opts("blank.jsonl", "\n  \n\n"), {"blank.jsonl", "no records"});
  auto o = opts("allbad.jsonl", "{}\n[]\n");
  o.skip_bad_lines = true;
  expect_load_error(o, {"allbad.jsonl", "all 2 were skipped", o.path + ":1: "});
}

TEST_F(ChatDataTest, BadOptionsThrow) {
  ChatDataOptions missing;
  missing.path = dir_->file("does_not_exist.jsonl");
  expect_load_error(missing, {missing.path, "no such file"});
  auto o = opts("ok.jsonl", std::string(kQA) + "\n");
  o.max_seq_length = 2;
  expect_load_error(o, {"max_seq_length is 2"});
  o.max_seq_length = 512;
  o.chat_template = "{instruction}";
  expect_load_error(o, {"chat template", "{output}"});
}

// ---- collate -----------------------------------------------------------------------------------------

TEST_F(ChatDataTest, CollateRightPadsAndMasks) {
  auto o = opts("collate.jsonl", std::string(kQA) + "\n" + kMulti + "\n");
  const ChatDataset d = ChatDataset::load(o, *tok_);
  const int64_t n0 = int64_t(d[0].ids.size()), n1 = int64_t(d[1].ids.size());
  ASSERT_LT(n0, n1);
  // pad_id = eos: the pitfall of SPEC.md §6.4 must not mask the real EOS.
  const int32_t pad = tok_->eos_id();
  const engine::HostBatch b = engine::collate(d, {0, 1}, pad);
  EXPECT_EQ(b.B, 2);
  EXPECT_EQ(b.T, n1);
  ASSERT_EQ(b.ids.size(), size_t(2 * n1));
  ASSERT_EQ(b.attention_mask.size(), b.ids.size());
  ASSERT_EQ(b.labels.size(), b.ids.size());
  for (int64_t t = 0; t < n1; ++t) {
    const bool real0 = t < n0;
    EXPECT_EQ(b.ids[t], real0 ? d[0].ids[t] : pad) << t;
    EXPECT_EQ(b.attention_mask[t], real0 ? 1 : 0) << t;
    EXPECT_EQ(b.labels[t], real0 ? d[0].labels[t] : kIgnoreLabel) << t;
    EXPECT_EQ(b.ids[n1 + t], d[1].ids[t]);
    EXPECT_EQ(b.attention_mask[n1 + t], 1);
    EXPECT_EQ(b.labels[n1 + t], d[1].labels[t]);
  }
  EXPECT_EQ(b.labels[n0 - 1], tok_->eos_id());  // the real EOS of the short row is still a target
  // Order follows the indices; an empty micro-batch is B = T = 0.
  const engine::HostBatch r = engine::collate(d, {1, 0}, 0);
  EXPECT_EQ(std::vector<int32_t>(r.ids.begin(), r.ids.begin() + n1), d[1].ids);
  EXPECT_EQ(r.ids[n1 + n0], 0);
  const engine::HostBatch e = engine::collate(d, {}, 0);
  EXPECT_EQ(e.B, 0);
  EXPECT_EQ(e.T, 0);
  EXPECT_TRUE(e.ids.empty());
  EXPECT_THROW(engine::collate(d, {0, 2}, 0), Error);
}

}  // namespace
