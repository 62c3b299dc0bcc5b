#include "engine/chat_data.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/check.h"

namespace engine {
namespace {

const char* role_name(ChatRole r) {
  switch (r) {
    case ChatRole::kSystem: return "system";
    case ChatRole::kUser: return "user";
    case ChatRole::kAssistant: return "assistant";
  }
  return "?";
}

// The code point starting at s[i] and its byte length; an invalid byte reads as (-1, 1).
std::pair<int32_t, size_t> utf8_at(const std::string& s, size_t i) {
  const auto b = [&](size_t k) { return uint8_t(s[k]); };
  const uint8_t c = b(i);
  size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
  if (len == 0 || i + len > s.size()) return {-1, 1};
  int32_t cp = len == 1 ? c : c & (0x7f >> len);
  for (size_t k = 1; k < len; ++k) {
    if ((b(i + k) & 0xc0) != 0x80) return {-1, 1};
    cp = (cp << 6) | (b(i + k) & 0x3f);
  }
  return {cp, len};
}

// Python's str.isspace() set, which str.strip() (and so Jinja's |trim) removes.
bool is_py_space(int32_t cp) {
  return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 || cp == 0xa0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f ||
         cp == 0x205f || cp == 0x3000;
}

// Roles: an optional first system message, then user/assistant alternating from user; one assistant at least.
void check_roles(const std::vector<ChatMessage>& m) {
  const size_t first = (!m.empty() && m[0].role == ChatRole::kSystem) ? 1 : 0;
  bool any_assistant = false;
  for (size_t i = first; i < m.size(); ++i) {
    const ChatRole want = (i - first) % 2 == 0 ? ChatRole::kUser : ChatRole::kAssistant;
    if (m[i].role == ChatRole::kSystem)
      throw Error(str_cat("messages[", i, "] is a system message; only the first message may be one"));
    if (m[i].role != want)
      throw Error(str_cat("messages[", i, "] is '", role_name(m[i].role), "' where '", role_name(want),
                          "' was expected: after an optional first system message, roles must alternate "
                          "user/assistant starting with user"));
    any_assistant |= m[i].role == ChatRole::kAssistant;
  }
  if (!any_assistant) throw Error("no assistant message: the record has nothing to learn from");
}

}  // namespace

const char* loss_on_name(LossOn l) { return l == LossOn::kAll ? "all" : "assistant"; }

LossOn loss_on_from_name(const std::string& s) {
  if (s == "all") return LossOn::kAll;
  if (s == "assistant") return LossOn::kAssistant;
  throw Error(str_cat("loss_on is '", s, "'; allowed: all, assistant"));
}

std::string trim_whitespace(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e) {
    const auto [cp, len] = utf8_at(s, b);
    if (!is_py_space(cp)) break;
    b += len;
  }
  while (e > b) {
    size_t start = e - 1;
    while (start > b && (uint8_t(s[start]) & 0xc0) == 0x80) --start;  // back to the lead byte
    const auto [cp, len] = utf8_at(s, start);
    if (start + len != e || !is_py_space(cp)) break;
    e = start;
  }
  return s.substr(b, e - b);
}

std::vector<ChatMessage> parse_chat_record(const std::string& line) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(str_cat("invalid JSON: ", e.what()));
  }
  if (!j.is_object()) throw Error(str_cat("expected a JSON object with \"messages\", got ", j.type_name()));
  const auto it = j.find("messages");
  if (it == j.end()) throw Error("missing \"messages\" (expected {\"messages\": [{\"role\": ..., \"content\": ...}]})");
  if (!it->is_array()) throw Error(str_cat("\"messages\" must be an array, got ", it->type_name()));
  if (it->empty()) throw Error("\"messages\" is empty");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < it->size(); ++i) {
    const auto& m = (*it)[i];
    if (!m.is_object())
      throw Error(str_cat("messages[", i, "] must be an object with \"role\" and \"content\", got ", m.type_name()));
    const auto role = m.find("role");
    if (role == m.end() || !role->is_string())
      throw Error(str_cat("messages[", i, "].role must be a string (system, user or assistant), got ",
                          role == m.end() ? "nothing" : role->type_name()));
    const std::string r = role->get<std::string>();
    ChatMessage msg;
    if (r == "system") {
      msg.role = ChatRole::kSystem;
    } else if (r == "user") {
      msg.role = ChatRole::kUser;
    } else if (r == "assistant") {
      msg.role = ChatRole::kAssistant;
    } else {
      throw Error(str_cat("messages[", i, "].role is '", r, "'; allowed: system, user, assistant"));
    }
    const auto content = m.find("content");
    if (content == m.end() || !content->is_string())
      throw Error(str_cat("messages[", i, "].content must be a string, got ",
                          content == m.end() ? "nothing" : content->type_name()));
    msg.content = content->get<std::string>();
    out.push_back(std::move(msg));
  }
  check_roles(out);
  return out;
}

ChatTemplate::ChatTemplate(const std::string& tmpl) {
  if (tmpl.empty()) return;
  bool has_instruction = false, has_output = false;
  std::string text;
  const auto flush = [&] {
    if (!text.empty()) parts_.push_back({Field::kText, text});
    text.clear();
  };
  for (size_t i = 0; i < tmpl.size(); ++i) {
    const char c = tmpl[i];
    if ((c == '{' || c == '}') && i + 1 < tmpl.size() && tmpl[i + 1] == c) {  // "{{" or "}}"
      text += c;
      ++i;
    } else if (c == '}') {
      throw Error(str_cat("chat template: single '}' at offset ", i, " (write '}}' for a literal brace)"));
    } else if (c == '{') {
      const size_t close = tmpl.find('}', i);
      if (close == std::string::npos)
        throw Error(str_cat("chat template: unmatched '{' at offset ", i, " (write '{{' for a literal brace)"));
      const std::string name = tmpl.substr(i + 1, close - i - 1);
      Field f;
      if (name == "system") {
        f = Field::kSystem;
      } else if (name == "instruction") {
        f = Field::kInstruction;
        has_instruction = true;
      } else if (name == "output") {
        f = Field::kOutput;
        has_output = true;
      } else {
        throw Error(str_cat("chat template: unknown placeholder {", name, "} at offset ", i,
                            "; allowed: {system} {instruction} {output}"));
      }
      flush();
      parts_.push_back({f, ""});
      i = close;
    } else {
      text += c;
    }
  }
  flush();
  if (!has_instruction || !has_output)
    throw Error("chat template: needs both {instruction} and {output} (and optionally {system})");
}

RenderedChat ChatTemplate::render(const std::vector<ChatMessage>& m) const {
  check_roles(m);
  RenderedChat r;
  const bool has_system = m[0].role == ChatRole::kSystem;
  const std::string system = has_system ? trim_whitespace(m[0].content) : "";
  const size_t first = has_system ? 1 : 0;
  const auto add_target = [&r](const std::string& s) {
    r.target_spans.emplace_back(r.text.size(), r.text.size() + s.size());
    r.text += s;
  };
  if (is_gemma()) {
    for (size_t i = first; i < m.size(); ++i) {
      const std::string content = trim_whitespace(m[i].content);
      if (m[i].role == ChatRole::kUser) {
        const bool prefix = i == first && !system.empty();
        r.text += "<start_of_turn>user\n" + (prefix ? system + "\n\n" : "") + content + "<end_of_turn>\n";
      } else {
        r.text += "<start_of_turn>model\n";
        add_target(content + "<end_of_turn>");
        r.text += "\n";
      }
    }
  } else {
    if ((m.size() - first) % 2 != 0)
      throw Error("the record ends with a user message, but the chat template needs an {output} for each "
                  "{instruction}");
    for (size_t i = first; i < m.size(); i += 2) {
      for (const Part& p : parts_) {
        switch (p.field) {
          case Field::kText: r.text += p.text; break;
          case Field::kSystem: r.text += system; break;
          case Field::kInstruction: r.text += trim_whitespace(m[i].content); break;
          case Field::kOutput: add_target(trim_whitespace(m[i + 1].content)); break;
        }
      }
    }
  }
  r.ends_with_assistant = m.back().role == ChatRole::kAssistant;
  return r;
}

ChatDataset ChatDataset::load(const ChatDataOptions& opt, const Tokenizer& tok) {
  if (opt.max_seq_length < 3)
    throw Error(str_cat("max_seq_length is ", opt.max_seq_length, "; it must be at least 3 (BOS, a token, EOS)"));
  const ChatTemplate tmpl(opt.chat_template);
  std::error_code ec;
  if (!std::filesystem::is_regular_file(opt.path, ec))
    throw Error(str_cat(opt.path, ": no such file (the chat dataset, JSONL)"));
  std::ifstream in(opt.path, std::ios::binary);
  if (!in) throw Error(str_cat(opt.path, ": cannot open: ", std::strerror(errno)));

  ChatDataset d;
  d.opt_ = opt;
  const size_t keep = size_t(opt.max_seq_length - 2);
  std::string line;
  for (int64_t lineno = 1; std::getline(in, line); ++lineno) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (lineno == 1 && line.compare(0, 3, "\xEF\xBB\xBF") == 0) line.erase(0, 3);  // UTF-8 BOM
    if (trim_whitespace(line).empty()) continue;
    RenderedChat r;
    try {
      r = tmpl.render(parse_chat_record(line));
    } catch (const Error& e) {
      const std::string msg = str_cat(opt.path, ":", lineno, ": ", e.what());
      if (!opt.skip_bad_lines) throw Error(msg);
      ++d.stats_.skipped;
      if (d.stats_.first_errors.size() < ChatDataStats::kMaxReportedErrors) d.stats_.first_errors.push_back(msg);
      continue;
    }
    const std::vector<TokenSpan> spans = tok.encode_spans(r.text);
    ChatExample ex;
    ex.line = lineno;
    ex.truncated = spans.size() > keep;
    const size_t n = std::min(spans.size(), keep);
    ex.ids.reserve(n + 2);
    ex.ids.push_back(tok.bos_id());
    for (size_t k = 0; k < n; ++k) ex.ids.push_back(spans[k].id);
    ex.ids.push_back(tok.eos_id());
    if (opt.loss_on == LossOn::kAll) {
      ex.labels = ex.ids;
    } else {
      ex.labels.assign(ex.ids.size(), kIgnoreLabel);
      size_t s = 0;  // target spans and tokens are both in text order
      for (size_t k = 0; k < n; ++k) {
        const uint32_t b = spans[k].begin, e = std::max(spans[k].end, b + 1);
        while (s < r.target_spans.size() && r.target_spans[s].second <= b) ++s;
        if (s < r.target_spans.size() && r.target_spans[s].first < e) ex.labels[k + 1] = ex.ids[k + 1];
      }
      if (r.ends_with_assistant && !ex.truncated) ex.labels.back() = tok.eos_id();
    }
    ++d.stats_.records;
    d.stats_.tokens += int64_t(ex.ids.size());
    d.stats_.truncated += ex.truncated;
    d.stats_.label_tokens += std::count_if(ex.labels.begin(), ex.labels.end(), [](int32_t l) { return l != kIgnoreLabel; });
    d.examples_.push_back(std::move(ex));
  }
  if (in.bad()) throw Error(str_cat(opt.path, ": read error: ", std::strerror(errno)));
  if (d.examples_.empty()) {
    if (d.stats_.skipped > 0)
      throw Error(str_cat(opt.path, ": no usable records: all ", d.stats_.skipped, " were skipped; first: ",
                          d.stats_.first_errors[0]));
    throw Error(str_cat(opt.path, ": no records (the file is empty or blank)"));
  }
  return d;
}

const ChatExample& ChatDataset::operator[](int64_t i) const {
  if (i < 0 || i >= size())
    throw Error(str_cat(opt_.path, ": example index ", i, " is outside [0, ", size(), ")"));
  return examples_[size_t(i)];
}

std::vector<int64_t> ChatDataset::lengths() const {
  std::vector<int64_t> out;
  out.reserve(examples_.size());
  for (const auto& e : examples_) out.push_back(int64_t(e.ids.size()));
  return out;
}

std::string ChatDataset::summary() const {
  std::string s = str_cat(opt_.path, ": ", stats_.records, " records, ", stats_.skipped, " skipped, ",
                          stats_.tokens, " tokens, ", stats_.truncated, " truncated to ", opt_.max_seq_length,
                          ", ", stats_.label_tokens, " label tokens (loss on ", loss_on_name(opt_.loss_on),
                          "), template ", opt_.chat_template.empty() ? "gemma" : "custom");
  if (!stats_.first_errors.empty()) s += "; first skipped: " + stats_.first_errors[0];
  return s;
}

HostBatch collate(const ChatDataset& data, const std::vector<int64_t>& indices, int32_t pad_id) {
  HostBatch b;
  b.B = int64_t(indices.size());
  for (int64_t i : indices) b.T = std::max(b.T, int64_t(data[i].ids.size()));
  const size_t n = size_t(b.B * b.T);
  b.ids.assign(n, pad_id);
  b.attention_mask.assign(n, 0);
  b.labels.assign(n, kIgnoreLabel);
  for (int64_t r = 0; r < b.B; ++r) {
    const ChatExample& ex = data[indices[size_t(r)]];
    const size_t row = size_t(r * b.T);
    std::copy(ex.ids.begin(), ex.ids.end(), b.ids.begin() + row);
    std::fill_n(b.attention_mask.begin() + row, ex.ids.size(), 1);
    std::copy(ex.labels.begin(), ex.labels.end(), b.labels.begin() + row);
  }
  return b;
}

}  // namespace engine
