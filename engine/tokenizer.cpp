#include "engine/tokenizer.h"

#include <sentencepiece_processor.h>

#include "engine/check.h"

namespace engine {

Tokenizer::Tokenizer() : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_file(const std::string& path) {
  Tokenizer t;
  const auto status = t.sp_->Load(path);
  if (!status.ok()) throw Error(str_cat(path, ": cannot load SentencePiece model: ", status.ToString()));
  t.path_ = path;
  t.vocab_size_ = t.sp_->GetPieceSize();
  t.bos_id_ = t.sp_->bos_id();
  t.eos_id_ = t.sp_->eos_id();
  t.unk_id_ = t.sp_->unk_id();
  // Every sequence is BOS + text + EOS (SPEC.md §2.3), so a model without them cannot be used.
  if (t.bos_id_ < 0 || t.eos_id_ < 0)
    throw Error(str_cat(path, ": SentencePiece model defines no BOS or EOS piece (bos_id=", t.bos_id_,
                        ", eos_id=", t.eos_id_, ")"));
  // Padding is marked by the attention mask, never by the id, so pad = eos is safe (SPEC.md §6.4).
  t.pad_id_ = t.sp_->pad_id() >= 0 ? t.sp_->pad_id() : t.eos_id_;
  t.start_of_turn_id_ = t.piece_to_id("<start_of_turn>");
  t.end_of_turn_id_ = t.piece_to_id("<end_of_turn>");
  return t;
}

std::vector<int32_t> Tokenizer::encode(const std::string& text) const {
  std::vector<int> ids;
  const auto status = sp_->Encode(text, &ids);
  if (!status.ok()) throw Error(str_cat(path_, ": encode failed: ", status.ToString()));
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::vector<TokenSpan> Tokenizer::encode_spans(const std::string& text) const {
  sentencepiece::ImmutableSentencePieceText spt;
  const auto status = sp_->Encode(text, spt.mutable_proto());
  if (!status.ok()) throw Error(str_cat(path_, ": encode failed: ", status.ToString()));
  std::vector<TokenSpan> out;
  out.reserve(spt.pieces_size());
  for (const auto& p : spt.pieces()) out.push_back({int32_t(p.id()), p.begin(), p.end()});
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  for (int32_t id : ids) check_id(id);
  std::string text;
  const auto status = sp_->Decode(std::vector<int>(ids.begin(), ids.end()), &text);
  if (!status.ok()) throw Error(str_cat(path_, ": decode failed: ", status.ToString()));
  return text;
}

int32_t Tokenizer::piece_to_id(const std::string& piece) const {
  // SentencePiece maps unknown pieces to unk; tell them apart from the real "<unk>" piece.
  const int id = sp_->PieceToId(piece);
  return sp_->IdToPiece(id) == piece ? id : -1;
}

std::string Tokenizer::id_to_piece(int32_t id) const {
  check_id(id);
  return sp_->IdToPiece(id);
}

void Tokenizer::check_id(int32_t id) const {
  if (id < 0 || id >= vocab_size_)
    throw Error(str_cat(path_, ": token id ", id, " is outside the vocabulary [0, ", vocab_size_, ")"));
}

}  // namespace engine
