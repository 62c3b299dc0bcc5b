// tests/engine/tiny_tokenizer.h: a tiny SentencePiece model trained at test time (libsentencepiece_train) with
// Gemma's layout: BPE, byte fallback, pad 0 / eos 1 / bos 2 / unk 3, <start_of_turn> and <end_of_turn> as
// user-defined symbols, no dummy prefix, identity normalization (SPEC.md §2.3).
#pragma once
#include <gtest/gtest.h>
#include <sentencepiece_trainer.h>

#include "tests/test_util.h"
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace test {


// Trains `<dir>/<prefix>.model`; `ids` overrides the special-id flags (e.g. "--pad_id=-1 ...").
inline std::string train_tiny_tokenizer(const TempDir& dir, const std::string& prefix,
                                        const std::string& ids = "--pad_id=0 --eos_id=1 --bos_id=2 --unk_id=3") {
  const std::string corpus = dir.write(prefix + "_corpus.txt",
      "Hello world, this is a tiny corpus for a test tokenizer.\n"
      "The quick brown fox jumps over the lazy dog.\n"
      "What is the capital of Japan? The capital of Japan is Tokyo.\n"
      "user model system assistant instruction response output\n"
      "今日はいい天気ですね。日本語の文章も少し入れます。\n"
      "東京は日本の首都です。富士山は日本で一番高い山です。\n"
      "質問に答えてください。答えは東京です。\n");
  const auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + corpus + " --model_prefix=" + dir.file(prefix) + " " + ids +
      " --pad_piece=<pad> --eos_piece=<eos> --bos_piece=<bos> --unk_piece=<unk>"
      " --user_defined_symbols=<start_of_turn>,<end_of_turn> --model_type=bpe --vocab_size=420"
      " --byte_fallback=true --character_coverage=1.0 --hard_vocab_limit=false --add_dummy_prefix=false"
      " --remove_extra_whitespaces=false --normalization_rule_name=identity --minloglevel=2");
  EXPECT_TRUE(status.ok()) << status.ToString();
  return dir.file(prefix + ".model");
}

}  // namespace test
