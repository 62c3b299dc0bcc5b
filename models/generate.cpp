#include "models/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <unordered_set>

#include "engine/philox.h"

namespace models {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Bytes of `s` up to the end of its last complete UTF-8 character (a trailing lead byte without all of its
// continuation bytes is cut).
size_t complete_utf8_prefix(const std::string& s) {
  size_t i = s.size(), back = 0;
  while (i > 0 && back < 4 && (uint8_t(s[i - 1]) & 0xC0) == 0x80) { --i; ++back; }  // continuation bytes
  if (i == 0) return back == 0 ? 0 : s.size();  // nothing but continuation bytes: not ours to judge
  const uint8_t lead = uint8_t(s[i - 1]);
  const size_t need = lead < 0x80 ? 0 : (lead >> 5) == 0x6 ? 1 : (lead >> 4) == 0xE ? 2 : (lead >> 3) == 0x1E ? 3 : 0;
  return back >= need ? s.size() : i - 1;
}

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD: SentencePiece's stand-in for incomplete bytes

}  // namespace

KvCache::KvCache(Engine& eng, const Gemma2Config& cfg, DType dtype_, int64_t max_len_)
    : max_len(max_len_), dtype(dtype_) {
  ENGINE_CHECK(max_len > 0, "KvCache: max_len must be positive, got ", max_len);
  const int64_t cols = cfg.num_key_value_heads * cfg.head_dim;
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    k.push_back(eng.empty({max_len, cols}, dtype));
    v.push_back(eng.empty({max_len, cols}, dtype));
  }
}

int32_t choose_token(std::vector<double> logits, const std::vector<int32_t>& seen, const SamplingParams& s, double u) {
  const int64_t V = int64_t(logits.size());
  ENGINE_CHECK(V > 0, "choose_token: empty logits");
  ENGINE_CHECK(s.repetition_penalty > 0, "repetition_penalty must be > 0, got ", s.repetition_penalty);
  ENGINE_CHECK(s.top_k >= 0, "top_k must be >= 0, got ", s.top_k);
  ENGINE_CHECK(s.top_p > 0, "top_p must be in (0, 1], got ", s.top_p);
  if (s.repetition_penalty != 1) {
    std::vector<char> done(size_t(V), 0);
    for (int32_t id : seen) {
      if (id < 0 || id >= V || done[size_t(id)]) continue;
      done[size_t(id)] = 1;
      double& x = logits[size_t(id)];
      x = x < 0 ? x * s.repetition_penalty : x / s.repetition_penalty;
    }
  }
  if (s.temperature <= 0)  // greedy: the first maximum, as torch.argmax
    return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  for (double& x : logits) x /= s.temperature;
  if (s.top_k > 0 && s.top_k < V) {  // drop everything below the k-th largest (ties with it stay)
    std::vector<double> sorted(logits);
    std::nth_element(sorted.begin(), sorted.begin() + (s.top_k - 1), sorted.end(), std::greater<double>());
    const double kth = sorted[size_t(s.top_k - 1)];
    for (double& x : logits)
      if (x < kth) x = -INFINITY;
  }
  if (s.top_p < 1) {
    std::vector<int32_t> order(static_cast<size_t>(V));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[size_t(a)] < logits[size_t(b)]; });
    const double mx = logits[size_t(order.back())];
    double total = 0;
    for (double x : logits) total += std::exp(x - mx);
    double cum = 0;
    for (size_t r = 0; r + 1 < order.size(); ++r) {  // the most likely token always stays
      double& x = logits[size_t(order[r])];
      cum += std::exp(x - mx) / total;
      if (cum <= 1 - s.top_p) x = -INFINITY;
    }
  }
  const double mx = *std::max_element(logits.begin(), logits.end());
  double total = 0;
  for (double x : logits) total += std::exp(x - mx);
  const double target = u * total;
  double cum = 0;
  int32_t last = 0;
  for (int64_t i = 0; i < V; ++i) {
    const double e = std::exp(logits[size_t(i)] - mx);
    if (e == 0) continue;
    last = int32_t(i);
    cum += e;
    if (cum > target) return int32_t(i);
  }
  return last;  // u * total rounded up to the full sum
}

std::string TextStreamer::push(int32_t id) {
  ids_.push_back(id);
  std::string text = tok_->decode(ids_);
  size_t end = complete_utf8_prefix(text);
  // A byte-fallback character still missing bytes decodes to U+FFFD: hold it back until it completes.
  while (end >= 3 && text.compare(end - 3, 3, kReplacement) == 0) end -= 3;
  if (end <= emitted_.size() || text.compare(0, emitted_.size(), emitted_) != 0) return "";
  std::string piece = text.substr(emitted_.size(), end - emitted_.size());
  emitted_ = text.substr(0, end);
  return piece;
}

std::string TextStreamer::finish() {
  const std::string text = tok_->decode(ids_);
  if (text.size() <= emitted_.size() || text.compare(0, emitted_.size(), emitted_) != 0) return "";
  std::string piece = text.substr(emitted_.size());
  emitted_ = text;
  return piece;
}

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::kStopId: return "stop token";
    case StopReason::kMaxTokens: return "max_new_tokens";
    case StopReason::kContextFull: return "context full";
  }
  return "?";
}

Generator::Generator(Gemma2Model& model, int64_t max_len, const engine::Tokenizer* tok)
    : model_(&model), tok_(tok), cache_(model.engine(), model.config(), model.options().compute_dtype, max_len) {
  if (tok != nullptr)
    ENGINE_CHECK(tok->vocab_size() <= model.config().vocab_size, "tokenizer ", tok->path(), " has ",
                 tok->vocab_size(), " pieces, more than the model's vocab_size ", model.config().vocab_size);
}

std::vector<int32_t> Generator::stop_ids(const GenerateOptions& o) const {
  std::vector<int32_t> ids(o.stop_ids);
  for (int64_t e : model_->config().eos_token_ids) ids.push_back(int32_t(e));
  if (tok_ != nullptr)
    for (int32_t e : {tok_->eos_id(), tok_->end_of_turn_id()})
      if (e >= 0) ids.push_back(e);
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

std::vector<double> Generator::step(const std::vector<int32_t>& ids) {
  Engine& eng = model_->engine();
  const Tensor logits = model_->forward_cached(ids, cache_);
  cached_.insert(cached_.end(), ids.begin(), ids.end());
  Tensor host = eng.empty_host(logits.shape(), logits.dtype());
  eng.copy(host, logits);
  eng.synchronize();  // the next token id is chosen on the host
  std::vector<double> out(size_t(logits.numel()));
  for (size_t i = 0; i < out.size(); ++i) out[i] = engine::load_f64(host.data(), host.dtype(), int64_t(i));
  return out;
}

GenerateResult Generator::generate(const std::vector<int32_t>& context, const GenerateOptions& o,
                                   const TextCallback& on_text) {
  ENGINE_CHECK(!context.empty(), "generate: empty context (at least <bos> is needed)");
  ENGINE_CHECK(o.max_new_tokens > 0, "generate: max_new_tokens must be positive, got ", o.max_new_tokens);
  ENGINE_CHECK(int64_t(context.size()) < cache_.max_len, "generate: the context has ", context.size(),
               " tokens; the cache holds ", cache_.max_len, " (raise --max-context)");
  // Reuse the longest cached prefix; at least one token must be fed to get logits.
  size_t common = 0;
  while (common < cached_.size() && common < context.size() && cached_[common] == context[common]) ++common;
  common = std::min(common, context.size() - 1);
  cached_.resize(common);
  cache_.len = int64_t(common);

  GenerateResult r;
  r.reused_tokens = int64_t(common);
  r.prompt_tokens = int64_t(context.size() - common);
  const std::vector<int32_t> stops = o.ignore_eos ? std::vector<int32_t>{} : stop_ids(o);
  std::unique_ptr<TextStreamer> streamer;
  if (tok_ != nullptr) streamer = std::make_unique<TextStreamer>(*tok_);
  std::vector<int32_t> seen(context);

  auto t0 = std::chrono::steady_clock::now();
  std::vector<double> logits = step(std::vector<int32_t>(context.begin() + long(common), context.end()));
  r.prompt_seconds = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  while (true) {
    double u = 0;
    if (o.sampling.temperature > 0) {  // 53 random bits from two Philox words
      const uint32_t a = engine::philox_u32(o.sampling.seed, 0, 2 * draws_),
                     b = engine::philox_u32(o.sampling.seed, 0, 2 * draws_ + 1);
      u = (double(a >> 5) * 67108864.0 + double(b >> 6)) / 9007199254740992.0;
      ++draws_;
    }
    const int32_t id = choose_token(std::move(logits), seen, o.sampling, u);
    if (std::binary_search(stops.begin(), stops.end(), id)) {
      r.reason = StopReason::kStopId;
      r.stop_id = id;
      break;
    }
    r.ids.push_back(id);
    seen.push_back(id);
    if (streamer) {
      const std::string piece = streamer->push(id);
      if (!piece.empty() && on_text) on_text(piece);
    }
    if (int64_t(r.ids.size()) >= o.max_new_tokens) { r.reason = StopReason::kMaxTokens; break; }
    if (cache_.len >= cache_.max_len) { r.reason = StopReason::kContextFull; break; }
    logits = step({id});
  }
  r.decode_seconds = seconds_since(t0);
  if (streamer) {
    const std::string rest = streamer->finish();
    if (!rest.empty() && on_text) on_text(rest);
    r.text = tok_->decode(r.ids);
  }
  return r;
}

std::string gemma_chat_prompt(const std::vector<engine::ChatMessage>& m) {
  // engine::ChatTemplate renders training records, which must contain an assistant message; this is the same
  // Gemma layout (content trimmed, a system message folded into the first user turn) for a conversation that
  // ends with the user, plus the generation prompt.
  using engine::ChatRole;
  const size_t first = !m.empty() && m[0].role == ChatRole::kSystem ? 1 : 0;
  ENGINE_CHECK(m.size() > first && m.back().role == ChatRole::kUser,
               "chat prompt: the conversation must end with a user message");
  const std::string system = first ? engine::trim_whitespace(m[0].content) : "";
  std::string text;
  for (size_t i = first; i < m.size(); ++i) {
    const ChatRole want = (i - first) % 2 == 0 ? ChatRole::kUser : ChatRole::kAssistant;
    ENGINE_CHECK(m[i].role == want, "chat prompt: messages[", i,
                 "] breaks the user/assistant alternation (after an optional first system message)");
    const std::string content = engine::trim_whitespace(m[i].content);
    if (want == ChatRole::kUser)
      text += "<start_of_turn>user\n" + (i == first && !system.empty() ? system + "\n\n" : "") + content +
              "<end_of_turn>\n";
    else
      text += "<start_of_turn>model\n" + content + "<end_of_turn>\n";
  }
  return text + "<start_of_turn>model\n";
}

std::vector<int32_t> chat_prompt_ids(const engine::Tokenizer& tok, const std::vector<engine::ChatMessage>& messages) {
  std::vector<int32_t> ids{tok.bos_id()};  // BOS as a token, never as text (SPEC.md §7.4)
  const std::vector<int32_t> body = tok.encode(gemma_chat_prompt(messages));
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

GenerateResult ChatSession::ask(const std::string& prompt, const GenerateOptions& o, const TextCallback& on_text) {
  if (raw_) {
    std::vector<int32_t> ids{tok_->bos_id()};
    const std::vector<int32_t> body = tok_->encode(prompt);
    ids.insert(ids.end(), body.begin(), body.end());
    return gen_->generate(ids, o, on_text);
  }
  std::vector<engine::ChatMessage> next(messages_);
  next.push_back({engine::ChatRole::kUser, prompt});
  GenerateResult r = gen_->generate(chat_prompt_ids(*tok_, next), o, on_text);
  next.push_back({engine::ChatRole::kAssistant, r.text});  // rendered as "{answer}<end_of_turn>\n"
  messages_ = std::move(next);
  return r;
}

}  // namespace models
