// tests/engine/tokenizer_cpu_test.cpp: engine::Tokenizer on a tiny SentencePiece model with Gemma's layout.
#include "engine/tokenizer.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "engine/check.h"
#include "tests/engine/tiny_tokenizer.h"

namespace {

using engine::Error;
using engine::Tokenizer;

class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir;
    tok_ = new Tokenizer(Tokenizer::from_file(test::train_tiny_tokenizer(*dir_, "tiny")));
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete dir_;
  }
  static test::TempDir* dir_;
  static Tokenizer* tok_;
};
test::TempDir* TokenizerTest::dir_ = nullptr;
Tokenizer* TokenizerTest::tok_ = nullptr;

TEST_F(TokenizerTest, GemmaSpecialIds) {
  const Tokenizer& t = *tok_;
  EXPECT_EQ(t.pad_id(), 0);
  EXPECT_EQ(t.eos_id(), 1);
  EXPECT_EQ(t.bos_id(), 2);
  EXPECT_EQ(t.unk_id(), 3);
  EXPECT_EQ(t.id_to_piece(0), "<pad>");
  EXPECT_EQ(t.id_to_piece(1), "<eos>");
  EXPECT_EQ(t.id_to_piece(2), "<bos>");
  EXPECT_EQ(t.piece_to_id("<unk>"), 3);  // the real unk piece, not "unknown"
  EXPECT_EQ(t.piece_to_id("no_such_piece"), -1);
  EXPECT_GT(t.vocab_size(), 256 + 6);  // byte pieces + specials
  EXPECT_EQ(t.start_of_turn_id(), t.piece_to_id("<start_of_turn>"));
  EXPECT_EQ(t.end_of_turn_id(), t.piece_to_id("<end_of_turn>"));
  EXPECT_GE(t.start_of_turn_id(), 4);
  EXPECT_GE(t.end_of_turn_id(), 4);
  EXPECT_NE(t.start_of_turn_id(), t.end_of_turn_id());
}

TEST_F(TokenizerTest, EncodeAddsNoSpecials) {
  const auto ids = tok_->encode("Hello world");
  ASSERT_FALSE(ids.empty());
  for (int32_t id : ids) {
    EXPECT_NE(id, tok_->bos_id());
    EXPECT_NE(id, tok_->eos_id());
  }
  EXPECT_TRUE(tok_->encode("").empty());
}

TEST_F(TokenizerTest, TurnMarkersInTextAreSingleIds) {
  const int32_t sot = tok_->start_of_turn_id(), eot = tok_->end_of_turn_id();
  EXPECT_EQ(tok_->encode("<start_of_turn>"), std::vector<int32_t>{sot});
  EXPECT_EQ(tok_->encode("<end_of_turn>"), std::vector<int32_t>{eot});
  const auto ids = tok_->encode("<start_of_turn>user\n東京は?<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_EQ(ids.front(), sot);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), sot), 2);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), eot), 1);
  // Control pieces are not matched in text: "<eos>" is characters, not id 1.
  const auto eos_text = tok_->encode("<eos>");
  EXPECT_GT(eos_text.size(), 1u);
  EXPECT_EQ(std::count(eos_text.begin(), eos_text.end(), tok_->eos_id()), 0);
}

TEST_F(TokenizerTest, RoundTripEnglishJapaneseBytes) {
  for (const std::string s : {"Hello world, the quick brown fox.", "東京は日本の首都です。",
                              "  two  spaces\tand\nnewlines\n", "unseen chars: 🍣 Ω ü", "mixed 日本 and English"}) {
    const auto ids = tok_->encode(s);
    EXPECT_EQ(tok_->decode(ids), s);
    for (int32_t id : ids) EXPECT_NE(id, tok_->unk_id()) << "byte fallback should avoid <unk> in: " << s;
  }
}

TEST_F(TokenizerTest, SpansMatchIdsAndCoverText) {
  const std::string s = "<start_of_turn>user\n富士山 🍣 is high<end_of_turn>";
  const auto spans = tok_->encode_spans(s);
  const auto ids = tok_->encode(s);
  ASSERT_EQ(spans.size(), ids.size());
  uint32_t covered = 0;
  for (size_t i = 0; i < spans.size(); ++i) {
    EXPECT_EQ(spans[i].id, ids[i]);
    EXPECT_EQ(spans[i].begin, covered) << "token " << i;  // contiguous, in text order
    EXPECT_LE(spans[i].begin, spans[i].end);
    covered = spans[i].end;
  }
  EXPECT_EQ(covered, s.size());
  EXPECT_EQ(spans[0].end, 15u);  // "<start_of_turn>" is one piece of 15 bytes
}

TEST_F(TokenizerTest, BadIdsThrow) {
  EXPECT_THROW(tok_->id_to_piece(-1), Error);
  EXPECT_THROW(tok_->id_to_piece(tok_->vocab_size()), Error);
  EXPECT_THROW(tok_->decode({5, tok_->vocab_size()}), Error);
}

TEST_F(TokenizerTest, MissingOrCorruptFileNamesIt) {
  const std::string missing = dir_->file("nope.model");
  try {
    Tokenizer::from_file(missing);
    FAIL() << "expected engine::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
  }
  const std::string corrupt = dir_->write("corrupt.model", "this is not a protobuf \xff\xff\xff\xff");
  try {
    Tokenizer::from_file(corrupt);
    FAIL() << "expected engine::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(corrupt), std::string::npos) << e.what();
  }
}

TEST_F(TokenizerTest, PadFallsBackToEos) {
  const Tokenizer t = Tokenizer::from_file(
      test::train_tiny_tokenizer(*dir_, "nopad", "--pad_id=-1 --eos_id=1 --bos_id=2 --unk_id=0"));
  EXPECT_EQ(t.eos_id(), 1);
  EXPECT_EQ(t.pad_id(), t.eos_id());
}

TEST_F(TokenizerTest, ModelWithoutBosIsRejected) {
  const std::string path =
      test::train_tiny_tokenizer(*dir_, "nobos", "--pad_id=-1 --eos_id=1 --bos_id=-1 --unk_id=0");
  try {
    Tokenizer::from_file(path);
    FAIL() << "expected engine::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no BOS or EOS"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

TEST_F(TokenizerTest, Movable) {
  Tokenizer a = Tokenizer::from_file(tok_->path());
  Tokenizer b = std::move(a);
  EXPECT_EQ(b.encode("Tokyo"), tok_->encode("Tokyo"));
}

}  // namespace
