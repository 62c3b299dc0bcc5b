// models/generate.h: text generation with the (optionally QLoRA-adapted) Gemma-2 model.
//   KvCache: per layer, the keys (after RoPE) and values of every token fed so far, (max_len, KV*HD) in the
//     compute dtype; Gemma2Model::forward_cached appends to it and attends over it (ops/attention_decode.h).
//   Token choice (choose_token), in transformers' order (GenerationMixin._get_logits_processor): repetition
//     penalty (RepetitionPenaltyLogitsProcessor: each token id seen in the prompt or the output so far gets
//     logit < 0 ? logit * r : logit / r), then greedy argmax (temperature <= 0) or temperature, top-k
//     (TopKLogitsWarper: drop logits below the k-th largest), top-p (TopPLogitsWarper: drop the ascending-
//     sorted tokens whose cumulative probability is <= 1 - p, always keeping the most likely) and a draw from
//     the softmax with one Philox uniform, so a seed reproduces a sample on every backend. f64 on the host.
//   Generator: feeds a context (reusing the cache for the longest prefix it already holds, so a multi-turn
//     chat only prefills the new turn), then decodes one token per forward until a stop id (the config's eos
//     ids, the tokenizer's <eos> and <end_of_turn>), max_new_tokens or a full cache. Each step copies the
//     logits to the host (one synchronisation per token: the next token id is needed there).
//   TextStreamer: decodes the growing list of generated ids and hands out only complete UTF-8 characters,
//     so a character split over byte-fallback tokens (Japanese) is never emitted in halves.
//   ChatSession: Gemma's chat template (engine/chat_data.h's layout) plus the generation prompt:
//     <bos><start_of_turn>user\n{q}<end_of_turn>\n<start_of_turn>model\n, previous turns kept; or raw prompts
//     (<bos> + the text, no template, no history).
// Tests: tests/models/generate_cpu_test.cpp, generate_gpu_test.cpp; parity: tests/parity/generate_parity.py.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/chat_data.h"
#include "engine/tokenizer.h"
#include "models/gemma2.h"

namespace models {

struct KvCache {
  // Allocates L x 2 tensors of (max_len, KV*HD) in `dtype` on the engine's device.
  KvCache(Engine& eng, const Gemma2Config& cfg, DType dtype, int64_t max_len);
  int64_t max_len = 0;
  int64_t len = 0;           // tokens whose keys and values are stored (positions 0 .. len-1)
  DType dtype = DType::kF32;
  std::vector<Tensor> k, v;  // per layer, (max_len, KV*HD)
};

struct SamplingParams {
  double temperature = 0;          // <= 0: greedy (argmax, first index on ties)
  int64_t top_k = 0;               // 0: off
  double top_p = 1;                // >= 1: off
  double repetition_penalty = 1;   // 1: off; > 0
  uint64_t seed = 0;               // Philox key of the draws
};

// The next token from `logits` (V) given the ids seen so far (prompt and output) and a uniform u in [0, 1)
// (used only when sampling). Throws engine::Error on bad parameters.
int32_t choose_token(std::vector<double> logits, const std::vector<int32_t>& seen, const SamplingParams& s, double u);

// Hands out the decoded text of a growing id list in pieces that end on whole UTF-8 characters.
class TextStreamer {
 public:
  explicit TextStreamer(const engine::Tokenizer& tok) : tok_(&tok) {}
  std::string push(int32_t id);  // the new complete text (maybe "")
  std::string finish();          // the rest, incomplete bytes included
  const std::vector<int32_t>& ids() const { return ids_; }

 private:
  const engine::Tokenizer* tok_;
  std::vector<int32_t> ids_;
  std::string emitted_;
};

struct GenerateOptions {
  int64_t max_new_tokens = 300;
  SamplingParams sampling;
  bool ignore_eos = false;            // never stop on a stop id (parity runs compare fixed lengths)
  std::vector<int32_t> stop_ids;      // in addition to the config's eos ids and the tokenizer's
};

enum class StopReason { kStopId, kMaxTokens, kContextFull };
const char* stop_reason_name(StopReason r);

struct GenerateResult {
  std::vector<int32_t> ids;      // generated tokens, the stop id excluded
  int32_t stop_id = -1;          // the id that stopped generation (kStopId)
  StopReason reason = StopReason::kMaxTokens;
  std::string text;              // decoded ids (with a tokenizer)
  int64_t prompt_tokens = 0;     // context tokens fed this call
  int64_t reused_tokens = 0;     // context tokens already in the cache
  double prompt_seconds = 0;     // prefill, up to the first logits on the host
  double decode_seconds = 0;     // the rest: one forward per generated token after the first
};

using TextCallback = std::function<void(const std::string&)>;

class Generator {
 public:
  // The cache holds max_len tokens (context and output together). `tok` (optional) decodes the text, adds
  // its <eos> and <end_of_turn> to the stop ids; the model and tokenizer must outlive the generator.
  Generator(Gemma2Model& model, int64_t max_len, const engine::Tokenizer* tok = nullptr);

  // Generates after `context` (every token so far, BOS included). on_text receives the text as it grows.
  GenerateResult generate(const std::vector<int32_t>& context, const GenerateOptions& o,
                          const TextCallback& on_text = {});
  std::vector<int32_t> stop_ids(const GenerateOptions& o) const;
  void reset() { cache_.len = 0; cached_.clear(); }
  const KvCache& cache() const { return cache_; }

 private:
  std::vector<double> step(const std::vector<int32_t>& ids);  // forward_cached + logits to the host

  Gemma2Model* model_;
  const engine::Tokenizer* tok_;
  KvCache cache_;
  std::vector<int32_t> cached_;  // the tokens whose keys/values the cache holds
  uint64_t draws_ = 0;           // Philox counter: successive samples never reuse a draw
};

// Gemma's template of `messages` (optional system, then user/assistant alternating, ending with user) plus the
// generation prompt "<start_of_turn>model\n"; per message "<start_of_turn>{user|model}\n{trimmed content}
// <end_of_turn>\n", as engine::ChatTemplate renders training records. No "<bos>" text: chat_prompt_ids puts
// the BOS token in front of the tokenized prompt.
std::string gemma_chat_prompt(const std::vector<engine::ChatMessage>& messages);
std::vector<int32_t> chat_prompt_ids(const engine::Tokenizer& tok, const std::vector<engine::ChatMessage>& messages);

class ChatSession {
 public:
  // raw: every prompt is sent as <bos> + text, with no template and no history.
  ChatSession(Generator& gen, const engine::Tokenizer& tok, bool raw) : gen_(&gen), tok_(&tok), raw_(raw) {}
  GenerateResult ask(const std::string& prompt, const GenerateOptions& o, const TextCallback& on_text = {});
  void reset() { messages_.clear(); }  // forget the conversation (the cache prefix is reused anyway)
  const std::vector<engine::ChatMessage>& messages() const { return messages_; }

 private:
  Generator* gen_;
  const engine::Tokenizer* tok_;
  bool raw_;
  std::vector<engine::ChatMessage> messages_;
};

}  // namespace models
