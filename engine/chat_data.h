// engine/chat_data.h: JSONL chat records -> chat template -> token ids + labels, and the collator.
//   Record (one per line): {"messages": [{"role": "system|user|assistant", "content": "..."}, ...]}. After an
//   optional first system message, roles alternate user/assistant (as Gemma's template demands) and at least
//   one assistant message is required. Every bad line is an engine::Error "file:line: problem", or with
//   skip_bad_lines it is counted and skipped; blank lines are ignored.
//   Templates (content trimmed like the HF template's `|trim`, Python str.strip() whitespace):
//     Gemma (default, SPEC.md §2.3): per message "<start_of_turn>{user|model}\n{content}<end_of_turn>\n".
//       Gemma has no system role: a system message goes before the first user message as system + "\n\n" +
//       user (the convention of Gemma 3's template). The template's own "<bos>" is not rendered: BOS is
//       added as a token, which avoids the double-BOS pitfall (SPEC.md §7.4).
//     Custom (the notebook's style): a string with {system} {instruction} {output}, rendered once per
//       user->assistant pair and concatenated; {system} is the system message or "". "{{" and "}}" are
//       literal braces, any other {name} is an error (Python str.format rules).
//   Tokens (SPEC.md §2.3, §6.2, add_eos_token=True): BOS + encode(text) + EOS, the text tokenized in one
//   piece; truncation cuts the text tokens to max_seq_length - 2, so a truncated example still ends in EOS.
//   Labels (unshifted: the model shifts, SPEC.md §1.7):
//     LossOn::kAll (the notebook, SPEC.md §6.4): labels = ids, every token is a target.
//     LossOn::kAssistant: targets are the tokens of assistant contents (a token counts if any of its bytes
//       is assistant content) plus Gemma's <end_of_turn> after each, and the final EOS when the record ends
//       with an assistant message that was not truncated (a cut reply must not teach the model to stop);
//       everything else -100.
//   Tests: tests/engine/chat_data_cpu_test.cpp.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "engine/tokenizer.h"

namespace engine {

constexpr int32_t kIgnoreLabel = -100;  // HF's ignore_index (SPEC.md §1.7)

enum class ChatRole { kSystem, kUser, kAssistant };
struct ChatMessage {
  ChatRole role = ChatRole::kUser;
  std::string content;  // as in the file, untrimmed
};

enum class LossOn { kAll, kAssistant };
const char* loss_on_name(LossOn l);            // "all", "assistant"
LossOn loss_on_from_name(const std::string& s);  // throws engine::Error listing the allowed names

struct ChatDataOptions {
  std::string path;              // JSONL file, e.g. "data/train.jsonl"
  int64_t max_seq_length = 512;  // tokens per example including BOS and EOS, >= 3 (SPEC.md §6.2)
  std::string chat_template;     // "" = Gemma's; e.g. "{system}\n### Instruction:\n{instruction}\n### Response:\n{output}"
  LossOn loss_on = LossOn::kAll;  // kAll = the notebook's DataCollatorForLanguageModeling (SPEC.md §6.4)
  bool skip_bad_lines = false;   // count and skip bad records instead of failing
};

// Parses one JSONL line into messages; throws engine::Error describing the problem (no file:line prefix:
// the caller knows where the line came from).
std::vector<ChatMessage> parse_chat_record(const std::string& line);

// Trims Python str.strip() whitespace (ASCII and Unicode, e.g. U+3000 ideographic space) from both ends.
std::string trim_whitespace(const std::string& s);

// Rendered text and the byte ranges [begin, end) that are loss targets under LossOn::kAssistant.
struct RenderedChat {
  std::string text;
  std::vector<std::pair<size_t, size_t>> target_spans;
  bool ends_with_assistant = false;  // the final EOS is a target only then
};

class ChatTemplate {
 public:
  explicit ChatTemplate(const std::string& tmpl = "");  // "" = Gemma; throws engine::Error on a bad template
  // Throws engine::Error (no prefix) when the messages do not fit the template.
  RenderedChat render(const std::vector<ChatMessage>& messages) const;
  bool is_gemma() const { return parts_.empty(); }

 private:
  enum class Field { kText, kSystem, kInstruction, kOutput };
  struct Part {
    Field field = Field::kText;
    std::string text;  // literal text for kText
  };
  std::vector<Part> parts_;  // empty for Gemma's template
};

struct ChatExample {
  std::vector<int32_t> ids;     // BOS ... EOS, at most max_seq_length tokens
  std::vector<int32_t> labels;  // same length; kIgnoreLabel where not a target
  int64_t line = 0;             // 1-based line in the JSONL file
  bool truncated = false;       // text tokens were cut to max_seq_length - 2
};

struct ChatDataStats {
  static constexpr size_t kMaxReportedErrors = 5;
  int64_t records = 0;       // examples kept
  int64_t skipped = 0;       // bad lines skipped (skip_bad_lines)
  int64_t tokens = 0;        // sum of example lengths after truncation, BOS and EOS included
  int64_t truncated = 0;     // examples cut to max_seq_length
  int64_t label_tokens = 0;  // labels != -100, unshifted
  std::vector<std::string> first_errors;  // "file:line: problem" of the first kMaxReportedErrors skipped lines
};

class ChatDataset {
 public:
  // Reads, validates, renders and tokenizes the whole file. Throws engine::Error naming file:line for a bad
  // record (unless skip_bad_lines), and when no record is left.
  static ChatDataset load(const ChatDataOptions& opt, const Tokenizer& tok);

  int64_t size() const { return int64_t(examples_.size()); }
  const ChatExample& operator[](int64_t i) const;  // throws on an index outside [0, size)
  std::vector<int64_t> lengths() const;            // tokens per example, for the sampler
  const ChatDataStats& stats() const { return stats_; }
  LossOn loss_on() const { return opt_.loss_on; }
  const ChatDataOptions& options() const { return opt_; }
  // One line, e.g. "data/train.jsonl: 1000 records, 0 skipped, 251234 tokens, 3 truncated to 512, 251234
  // label tokens (loss on all), template gemma".
  std::string summary() const;

 private:
  ChatDataOptions opt_;
  std::vector<ChatExample> examples_;
  ChatDataStats stats_;
};

// One micro-batch, row-major (B, T), right-padded to the longest example (SPEC.md §6.4). Pads have mask 0
// and label -100. A real EOS keeps its label even when pad_id == eos_id: padding is marked by the mask,
// never recognised by its id (the pad = eos pitfall, SPEC.md §6.4).
struct HostBatch {
  int64_t B = 0;                        // examples; 0 for an empty micro-batch (see engine/sampler.h)
  int64_t T = 0;                        // longest example in the batch
  std::vector<int32_t> ids;             // (B, T), pad_id on pads
  std::vector<int32_t> attention_mask;  // (B, T), 1 real / 0 pad
  std::vector<int32_t> labels;          // (B, T), kIgnoreLabel on pads
};
HostBatch collate(const ChatDataset& data, const std::vector<int64_t>& indices, int32_t pad_id);

}  // namespace engine
