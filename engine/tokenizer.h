// engine/tokenizer.h: a SentencePiece model (Gemma's tokenizer.model) behind a small, move-only wrapper.
//   encode() adds no special tokens: the caller places BOS/EOS (engine/chat_data.h, SPEC.md §2.3, §6.2).
//   Pieces the model defines as USER_DEFINED (Gemma: <start_of_turn> 106, <end_of_turn> 107) are matched in
//   the text and come out as their single ids. CONTROL pieces (<bos> <eos> <pad>) are never matched in text:
//   "<eos>" written in a message is encoded as ordinary characters (HF's fast tokenizer would match it).
//   Gemma: pad 0, eos 1, bos 2, unk 3 (SPEC.md §2.3). Tests: tests/engine/tokenizer_cpu_test.cpp.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace engine {

// One token of an encoding and the bytes of the input text it came from. Byte-fallback pieces of one
// multi-byte character: all but the last have begin == end (SentencePiece's alignment).
struct TokenSpan {
  int32_t id = 0;
  uint32_t begin = 0;  // byte offset into the encoded text
  uint32_t end = 0;    // one past the last byte
};

class Tokenizer {
 public:
  // Loads a SentencePiece model file, e.g. "checkpoints/gemma-2-2b-jpn-it/tokenizer.model". Throws
  // engine::Error naming the file when it is missing or not a valid model.
  static Tokenizer from_file(const std::string& path);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  std::vector<int32_t> encode(const std::string& text) const;       // no BOS/EOS
  std::vector<TokenSpan> encode_spans(const std::string& text) const;  // same ids, with byte offsets
  std::string decode(const std::vector<int32_t>& ids) const;         // throws on ids outside the vocab

  int32_t piece_to_id(const std::string& piece) const;  // -1 when the vocab has no such piece
  std::string id_to_piece(int32_t id) const;            // throws on ids outside the vocab
  int32_t vocab_size() const { return vocab_size_; }    // e.g. 256000

  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t pad_id() const { return pad_id_; }  // the model's pad, or eos when it defines none
  int32_t unk_id() const { return unk_id_; }
  int32_t start_of_turn_id() const { return start_of_turn_id_; }  // -1 when absent
  int32_t end_of_turn_id() const { return end_of_turn_id_; }      // -1 when absent
  const std::string& path() const { return path_; }

 private:
  Tokenizer();
  void check_id(int32_t id) const;

  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string path_;
  int32_t vocab_size_ = 0;
  int32_t bos_id_ = -1, eos_id_ = -1, pad_id_ = -1, unk_id_ = -1;
  int32_t start_of_turn_id_ = -1, end_of_turn_id_ = -1;
};

}  // namespace engine
