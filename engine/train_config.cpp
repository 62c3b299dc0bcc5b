// engine/train_config.cpp: the field table and everything it drives (YAML, overrides, table, to_yaml, help),
// then the value checks. Tests: tests/engine/train_config_cpu_test.cpp.
#include "engine/train_config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include "engine/check.h"
#include "engine/safetensors.h"  // write_file_atomic

namespace engine {
namespace {

const std::vector<std::string> kLinearModules = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                 "gate_proj", "up_proj", "down_proj"};

// One value as written in the YAML file or on the command line, before conversion to the field's type.
struct Value {
  enum Kind { kNull, kScalar, kList } kind = kNull;
  std::string scalar;               // kScalar
  std::vector<std::string> list;    // kList
};

std::string describe(const Value& v) {
  if (v.kind == Value::kNull) return "nothing";
  if (v.kind == Value::kList) return "a list";
  return "'" + v.scalar + "'";
}

// ---- conversions, one overload per member type -------------------------------------------------------
// Each returns "" or what was expected; YAML text and overrides both go through these.

std::string convert(const Value& v, bool& out) {
  if (v.kind == Value::kScalar) {
    std::string s = v.scalar;
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    const bool t = s == "true" || s == "yes" || s == "on", f = s == "false" || s == "no" || s == "off";
    if (t || f) {
      out = t;
      return "";
    }
  }
  return "expected true or false, got " + describe(v);
}

std::string convert(const Value& v, int64_t& out) {
  if (v.kind == Value::kScalar && !v.scalar.empty()) {
    const char* s = v.scalar.c_str();
    char* end = nullptr;
    errno = 0;
    const long long x = std::strtoll(s, &end, 10);
    if (*end == '\0' && errno == 0) {
      out = x;
      return "";
    }
  }
  return "expected an integer, got " + describe(v);
}

std::string convert(const Value& v, double& out) {
  if (v.kind == Value::kScalar && !v.scalar.empty()) {
    const char* s = v.scalar.c_str();
    char* end = nullptr;
    errno = 0;
    const double x = std::strtod(s, &end);
    if (*end == '\0' && errno == 0 && std::isfinite(x)) {
      out = x;
      return "";
    }
  }
  return "expected a number, got " + describe(v);
}

std::string convert(const Value& v, std::string& out) {
  if (v.kind == Value::kList) return "expected a string, got a list";
  out = v.scalar;  // null (`key:` or `key: ~`) is the empty string
  return "";
}

std::string convert(const Value& v, std::optional<int64_t>& out) {
  int64_t x = 0;
  if (v.kind == Value::kNull) out.reset();
  else if (convert(v, x).empty()) out = x;
  else return "expected an integer or null, got " + describe(v);
  return "";
}

std::string convert(const Value& v, std::vector<std::string>& out) {
  if (v.kind == Value::kNull) return "expected a name or a list of names, got nothing";
  out = v.kind == Value::kScalar ? std::vector<std::string>{v.scalar} : v.list;
  return "";
}

std::string join(const std::vector<std::string>& items, const char* sep) {
  std::string s;
  for (size_t i = 0; i < items.size(); ++i) s += (i ? sep : "") + items[i];
  return s;
}

// Enum values (string fields) and list items (list fields) must come from `allowed` when it is not empty.
std::string check_allowed(const std::string& s, const std::vector<std::string>& allowed) {
  if (allowed.empty() || std::find(allowed.begin(), allowed.end(), s) != allowed.end()) return "";
  return "'" + s + "' is not one of: " + join(allowed, ", ");
}
std::string check_allowed(const std::vector<std::string>& items, const std::vector<std::string>& allowed) {
  for (const auto& s : items) {
    const std::string err = check_allowed(s, allowed);
    if (!err.empty()) return err;
  }
  return "";
}
template <typename T>
std::string check_allowed(const T&, const std::vector<std::string>&) { return ""; }

// ---- text forms: shortest round-trip numbers, so to_yaml() reloads to the same bits --------------------

// "5.0e-04", "1.0", "0.3": shortest digits that parse back to `x`, with a '.' so YAML 1.1 readers
// (PyYAML) also see a float.
std::string number_text(double x) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, x);
  std::string s(buf, r.ptr);
  if (s.find('.') == std::string::npos) s.insert(std::min(s.find('e'), s.size()), ".0");
  return s;
}

std::string quoted(const std::string& s) {
  std::string q = "\"";
  for (const char c : s) {
    if (c == '\n') q += "\\n";
    else if (c == '\t') q += "\\t";
    else if (c == '"' || c == '\\') q += std::string("\\") + c;
    else q += c;
  }
  return q + "\"";
}

// `free_text`: a path or template (quoted when shown) rather than an enum value.
std::string show(bool b, bool) { return b ? "true" : "false"; }
std::string show(int64_t x, bool) { return std::to_string(x); }
std::string show(double x, bool) { return number_text(x); }
std::string show(const std::string& s, bool free_text) { return free_text ? quoted(s) : s; }
std::string show(const std::optional<int64_t>& x, bool) { return x ? std::to_string(*x) : "null"; }
std::string show(const std::vector<std::string>& v, bool) { return "[" + join(v, ", ") + "]"; }

void emit(YAML::Emitter& e, bool b, bool) { e << b; }
void emit(YAML::Emitter& e, int64_t x, bool) { e << x; }
void emit(YAML::Emitter& e, double x, bool) { e << number_text(x); }
void emit(YAML::Emitter& e, const std::string& s, bool free_text) {
  if (free_text) e << YAML::DoubleQuoted;  // a path like "true" or "123" must stay a string
  e << s;
}
void emit(YAML::Emitter& e, const std::optional<int64_t>& x, bool) {
  if (x) e << *x; else e << YAML::Null;
}
void emit(YAML::Emitter& e, const std::vector<std::string>& v, bool) { e << YAML::Flow << v; }

const char* type_name(bool) { return "bool"; }
const char* type_name(int64_t) { return "int"; }
const char* type_name(double) { return "float"; }
const char* type_name(const std::string&) { return "string"; }
const char* type_name(const std::optional<int64_t>&) { return "int|null"; }
const char* type_name(const std::vector<std::string>&) { return "list"; }

// ---- the field table ------------------------------------------------------------------------------------

struct Field {
  std::string key;                    // "training.learning_rate"
  std::string type;                   // shown by --help: bool int float string enum list int|null
  std::string doc;                    // one line for --help
  std::vector<std::string> allowed;   // enum values or list items; empty = any
  bool required = false;              // must be set (non-empty)
  std::function<std::string(TrainConfig&, const Value&)> set;   // "" or what was wrong
  std::function<void(const TrainConfig&, YAML::Emitter&)> emit;
  std::function<std::string(const TrainConfig&)> show;

  std::string section() const { return key.substr(0, key.find('.')); }
  std::string leaf() const { return key.substr(key.find('.') + 1); }
};

template <typename S, typename T>
Field field(const char* key, S TrainConfig::*section, T S::*member, const char* doc,
            std::vector<std::string> allowed = {}, bool required = false) {
  const bool free_text = std::is_same<T, std::string>::value && allowed.empty();
  Field f;
  f.key = key;
  f.type = std::is_same<T, std::string>::value && !allowed.empty() ? "enum" : type_name(T{});
  f.doc = doc;
  f.allowed = allowed;
  f.required = required;
  f.set = [=](TrainConfig& c, const Value& v) {
    T x{};
    std::string err = convert(v, x);
    if (err.empty()) err = check_allowed(x, allowed);
    if (err.empty()) (c.*section).*member = std::move(x);
    return err;
  };
  f.emit = [=](const TrainConfig& c, YAML::Emitter& e) { emit(e, (c.*section).*member, free_text); };
  f.show = [=](const TrainConfig& c) { return show((c.*section).*member, free_text); };
  return f;
}

const std::vector<Field>& fields() {
  using C = TrainConfig;
  using M = ModelConfig;
  using D = DataConfig;
  using Q = QuantizationConfig;
  using L = LoraConfig;
  using T = TrainingConfig;
  static const std::vector<std::string> targets = [] {
    std::vector<std::string> t = kLinearModules;
    t.insert(t.begin(), "all-linear");
    return t;
  }();
  static const std::vector<Field> table = {
      field("model.path", &C::model, &M::path, "HF Gemma-2 folder (config.json, *.safetensors, tokenizer.model)",
            {}, true),
      field("model.attn_implementation", &C::model, &M::attn_implementation,
            "only eager: sdpa drops Gemma-2's attention softcap", {"eager"}),
      field("data.path", &C::data, &D::path, "training data, one JSON object per line", {}, true),
      field("data.prompt_format", &C::data, &D::prompt_format,
            "empty = Gemma chat template; else a template with {system} {instruction} {output} ({{ }} = braces)"),
      field("data.max_seq_length", &C::data, &D::max_seq_length, "tokens per sample incl. <bos>; longer are cut"),
      field("data.loss_on", &C::data, &D::loss_on, "all = every token (the notebook); assistant = {output} only",
            {"all", "assistant"}),
      field("data.skip_bad_lines", &C::data, &D::skip_bad_lines, "skip and count malformed lines instead of failing"),
      field("quantization.load_in_4bit", &C::quantization, &Q::load_in_4bit, "must be true: base weights are NF4"),
      field("quantization.bnb_4bit_quant_type", &C::quantization, &Q::bnb_4bit_quant_type, "4-bit code book",
            {"nf4"}),
      field("quantization.bnb_4bit_use_double_quant", &C::quantization, &Q::bnb_4bit_use_double_quant,
            "quantize the absmax values to 8 bits too"),
      field("quantization.bnb_4bit_compute_dtype", &C::quantization, &Q::bnb_4bit_compute_dtype,
            "dtype of the 4-bit matmuls; the fp16/bf16 flags decide (bfloat16 with fp16 is an error)",
            {"float16", "bfloat16", "float32"}),
      field("lora.r", &C::lora, &L::r, "LoRA rank"),
      field("lora.lora_alpha", &C::lora, &L::lora_alpha, "scaling numerator: alpha / r"),
      field("lora.lora_dropout", &C::lora, &L::lora_dropout, "dropout on the LoRA input, in [0, 1)"),
      field("lora.bias", &C::lora, &L::bias, "bias training", {"none"}),
      field("lora.target_modules", &C::lora, &L::target_modules, "all-linear (every projection) or a list of names",
            targets),
      field("lora.use_rslora", &C::lora, &L::use_rslora, "rank-stabilized scaling alpha / sqrt(r)"),
      field("lora.init_seed", &C::lora, &L::init_seed, "seed of the LoRA A initialization; null = training.seed"),
      field("training.output_dir", &C::training, &T::output_dir, "adapters, checkpoints, logs, resolved config",
            {}, true),
      field("training.num_train_epochs", &C::training, &T::num_train_epochs, "passes over the data (may be fractional)"),
      field("training.max_steps", &C::training, &T::max_steps, "optimizer steps; > 0 overrides num_train_epochs"),
      field("training.per_device_train_batch_size", &C::training, &T::per_device_train_batch_size,
            "sequences per micro-batch"),
      field("training.gradient_accumulation_steps", &C::training, &T::gradient_accumulation_steps,
            "micro-batches per optimizer step"),
      field("training.optim", &C::training, &T::optim, "AdamW variant (paged = optimizer state in host-paged memory)",
            {"paged_adamw_32bit", "adamw_torch", "adamw"}),
      field("training.learning_rate", &C::training, &T::learning_rate, "peak learning rate"),
      field("training.lr_scheduler_type", &C::training, &T::lr_scheduler_type, "LR schedule after warmup",
            {"cosine", "linear", "constant", "constant_with_warmup"}),
      field("training.warmup_ratio", &C::training, &T::warmup_ratio, "warmup steps = ceil(ratio * total steps)"),
      field("training.warmup_steps", &C::training, &T::warmup_steps, "> 0 overrides warmup_ratio"),
      field("training.max_grad_norm", &C::training, &T::max_grad_norm, "clip the global L2 grad norm; 0 = off"),
      field("training.weight_decay", &C::training, &T::weight_decay, "decoupled weight decay"),
      field("training.adam_beta1", &C::training, &T::adam_beta1, "Adam first-moment decay"),
      field("training.adam_beta2", &C::training, &T::adam_beta2, "Adam second-moment decay"),
      field("training.adam_epsilon", &C::training, &T::adam_epsilon, "Adam denominator epsilon"),
      field("training.group_by_length", &C::training, &T::group_by_length, "batch samples of similar length"),
      field("training.fp16", &C::training, &T::fp16, "fp16 autocast with loss scaling"),
      field("training.bf16", &C::training, &T::bf16, "bf16 autocast (fp16 and bf16 both false = f32)"),
      field("training.logging_strategy", &C::training, &T::logging_strategy, "when to log", {"steps", "epoch", "no"}),
      field("training.logging_steps", &C::training, &T::logging_steps, "optimizer steps between logs"),
      field("training.save_strategy", &C::training, &T::save_strategy, "when to save a checkpoint",
            {"steps", "epoch", "no"}),
      field("training.save_steps", &C::training, &T::save_steps, "optimizer steps between checkpoints"),
      field("training.save_total_limit", &C::training, &T::save_total_limit,
            "keep at most this many checkpoints; null = all"),
      field("training.seed", &C::training, &T::seed, "data order, dropout and LoRA init"),
      field("training.report_to", &C::training, &T::report_to, "metrics sink", {"tensorboard", "none"}),
      field("training.gradient_checkpointing", &C::training, &T::gradient_checkpointing,
            "recompute activations in backward to save memory"),
      field("training.checkpoint_layers", &C::training, &T::checkpoint_layers,
            "with gradient_checkpointing: recompute only the first N layers (the rest keep their activations: "
            "faster, more memory); null = all"),
      field("training.recompute_attention_probs", &C::training, &T::recompute_attention_probs,
            "recompute the (B,H,T,T) attention probabilities in backward instead of keeping them (long sequences)"),
      field("training.resume_from_checkpoint", &C::training, &T::resume_from_checkpoint,
            "empty, latest (newest in output_dir) or a checkpoint folder"),
      field("training.ddp_timeout", &C::training, &T::ddp_timeout,
            "data parallel: seconds without a finished optimizer step before the job is ended"),
  };
  return table;
}

const Field* find_field(const std::string& key) {
  for (const Field& f : fields()) {
    if (f.key == key) return &f;
  }
  return nullptr;
}

std::vector<std::string> sections() {
  std::vector<std::string> s;
  for (const Field& f : fields()) {
    if (std::find(s.begin(), s.end(), f.section()) == s.end()) s.push_back(f.section());
  }
  return s;
}

// ---- "did you mean" ---------------------------------------------------------------------------------

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// A near miss of `name` among `candidates` (compared by the part after the last '.', plus one for a
// different section), or "" when nothing is close: `lora.lora_alfa` -> lora.lora_alpha,
// `lora.learning_rate` -> training.learning_rate, `lora.alpha` -> lora.lora_alpha.
std::string suggest(const std::string& name, const std::vector<std::string>& candidates) {
  const auto leaf = [](const std::string& s) { return s.substr(s.rfind('.') + 1); };
  const auto head = [](const std::string& s) { return s.substr(0, s.find('.')); };
  const std::string n = leaf(name);
  std::string best;
  size_t best_score = std::max<size_t>(1, n.size() / 3) + 1;  // `training.lr` is not a near miss of lora.r
  for (const auto& c : candidates) {
    const std::string cl = leaf(c);
    size_t score = edit_distance(n, cl);
    if (n.size() >= 4 && cl.find(n) != std::string::npos) score = std::min<size_t>(score, 1);
    if (name.find('.') != std::string::npos && head(name) != head(c)) score += 1;
    if (score < best_score) best_score = score, best = c;
  }
  return best;
}

std::string with_suggestion(std::string msg, const std::string& name, const std::vector<std::string>& candidates) {
  const std::string s = suggest(name, candidates);
  return s.empty() ? msg : msg + "; did you mean '" + s + "'?";
}

std::vector<std::string> all_keys() {
  std::vector<std::string> k;
  for (const Field& f : fields()) k.push_back(f.key);
  return k;
}

// ---- reading ----------------------------------------------------------------------------------------

class Reader {
 public:
  explicit Reader(std::string source) : source_(std::move(source)) {}

  void read_yaml(TrainConfig& c, const std::string& text) {
    YAML::Node root;
    try {
      root = YAML::Load(text);
    } catch (const YAML::Exception& e) {
      throw Error(str_cat(source_, ":", e.mark.line + 1, ":", e.mark.column + 1, ": malformed YAML: ", e.msg));
    }
    if (root.IsNull()) return;
    if (!root.IsMap()) {
      error(at(root), "", "expected a mapping of sections (" + join(sections(), ", ") + ")");
      return;
    }
    for (const auto& sec : root) {
      const std::string name = sec.first.Scalar();
      const std::vector<std::string> secs = sections();
      if (std::find(secs.begin(), secs.end(), name) == secs.end()) {
        std::vector<std::string> candidates = secs;
        for (const auto& k : all_keys()) candidates.push_back(k);  // `learning_rate:` at the top level
        error(at(sec.first), name, with_suggestion("unknown section", name, candidates));
        continue;
      }
      if (sec.second.IsNull()) continue;
      if (!sec.second.IsMap()) {
        error(at(sec.second), name, "expected a mapping of keys");
        continue;
      }
      for (const auto& kv : sec.second) {
        const std::string key = name + "." + kv.first.Scalar();
        const std::string where = at(kv.first);
        const Field* f = find_field(key);
        if (f == nullptr) {
          error(where, key, with_suggestion("unknown key", key, all_keys()));
          continue;
        }
        const auto seen = where_.find(key);
        if (seen != where_.end()) {
          error(where, key, "duplicate key (also at " + seen->second + ")");
          continue;
        }
        where_[key] = where;
        Value v;
        if (to_value(kv.second, f, v, where)) set(c, *f, v, where);
      }
    }
  }

  void apply_override(TrainConfig& c, const std::string& kv) {
    const std::string where = "override '" + kv + "'";
    const size_t eq = kv.find('=');
    if (eq == std::string::npos) {
      error(where, "", "expected section.key=value");
      return;
    }
    const std::string key = kv.substr(0, eq), text = kv.substr(eq + 1);
    const Field* f = find_field(key);
    if (f == nullptr) {
      error(where, key, with_suggestion("unknown key", key, all_keys()));
      return;
    }
    Value v;
    if (text.empty() || text == "~" || text == "null") {
      v.kind = Value::kNull;
    } else if (text.front() == '[') {  // a YAML flow list: [q_proj, v_proj]
      YAML::Node n;
      try {
        n = YAML::Load(text);
      } catch (const YAML::Exception& e) {
        error(where, key, "malformed list: " + e.msg);
        return;
      }
      if (!to_value(n, f, v, where)) return;
    } else {  // the raw text: a template like "{instruction}" is not a YAML mapping here
      v.kind = Value::kScalar;
      v.scalar = text;
    }
    if (set(c, *f, v, where)) where_[key] = where;
  }

  // Where `key` got its value, for value checks: file:line, the override, or "<file> (default)".
  std::string where(const std::string& key) const {
    const auto it = where_.find(key);
    return it != where_.end() ? it->second : source_ + " (default)";
  }
  // `key` and where it was set, to name the other side of a conflict: "(training.bf16: default)".
  std::string other(const std::string& key) const {
    const auto it = where_.find(key);
    return "(" + key + ": " + (it != where_.end() ? it->second : "default") + ")";
  }
  void error(const std::string& where, const std::string& key, const std::string& msg) {
    errors_.push_back(where + ": " + (key.empty() ? "" : key + ": ") + msg);
  }
  void check(bool ok, const std::string& key, const std::string& msg) {
    if (!ok) error(where(key), key, msg);
  }

  void throw_if_errors() const {
    if (errors_.empty()) return;
    throw Error(str_cat(source_, ": invalid config (", errors_.size(), errors_.size() == 1 ? " error" : " errors",
                        "):\n  ", join(errors_, "\n  ")));
  }

 private:
  std::string at(const YAML::Node& n) const { return str_cat(source_, ":", n.Mark().line + 1); }

  bool to_value(const YAML::Node& n, const Field* f, Value& v, const std::string& where) {
    if (n.IsNull()) {
      v.kind = Value::kNull;
    } else if (n.IsScalar()) {
      v.kind = Value::kScalar;
      v.scalar = n.Scalar();
    } else if (n.IsSequence()) {
      v.kind = Value::kList;
      for (const auto& item : n) {
        if (!item.IsScalar()) {
          error(where, f->key, "expected a list of names, got a nested " + std::string(item.IsMap() ? "mapping" : "list"));
          return false;
        }
        v.list.push_back(item.Scalar());
      }
    } else {
      error(where, f->key, "expected " + f->type + ", got a mapping");
      return false;
    }
    return true;
  }

  bool set(TrainConfig& c, const Field& f, const Value& v, const std::string& where) {
    const std::string err = f.set(c, v);
    if (!err.empty()) error(where, f.key, err);
    return err.empty();
  }

  std::string source_;
  std::map<std::string, std::string> where_;  // key -> where it was last set
  std::vector<std::string> errors_;
};

// ---- value checks -----------------------------------------------------------------------------------

// "" or what is wrong with a prompt template: placeholders are {system} {instruction} {output}, with
// {{ and }} for literal braces (Python str.format rules); {output} must appear exactly once, since
// loss_on=assistant trains on what it expands to.
std::string prompt_format_error(const std::string& f) {
  int outputs = 0;
  for (size_t i = 0; i < f.size(); ++i) {
    if (f[i] == '}') {
      if (i + 1 < f.size() && f[i + 1] == '}') { ++i; continue; }
      return str_cat("unmatched '}' at offset ", i, " (write }} for a literal brace)");
    }
    if (f[i] != '{') continue;
    if (i + 1 < f.size() && f[i + 1] == '{') { ++i; continue; }
    const size_t close = f.find('}', i);
    if (close == std::string::npos) return str_cat("unmatched '{' at offset ", i, " (write {{ for a literal brace)");
    const std::string name = f.substr(i + 1, close - i - 1);
    if (name == "output") ++outputs;
    else if (name != "system" && name != "instruction")
      return "unknown placeholder '{" + name + "}' (known: {system}, {instruction}, {output})";
    i = close;
  }
  if (outputs != 1) return str_cat("must contain {output} exactly once, found ", outputs);
  return "";
}

void validate(const TrainConfig& c, Reader& r) {
  for (const Field& f : fields()) {  // required keys are paths: strings, shown quoted
    if (f.required) r.check(f.show(c) != quoted(""), f.key, "required key is missing");
  }
  const DataConfig& d = c.data;
  const std::string format_error = d.prompt_format.empty() ? "" : prompt_format_error(d.prompt_format);
  r.check(format_error.empty(), "data.prompt_format", format_error);
  r.check(d.max_seq_length >= 2, "data.max_seq_length",
          str_cat("must be >= 2 (a target needs a preceding token), got ", d.max_seq_length));

  r.check(c.quantization.load_in_4bit, "quantization.load_in_4bit",
          "must be true: the engine keeps the base weights in NF4 only");

  const LoraConfig& l = c.lora;
  r.check(l.r > 0, "lora.r", str_cat("must be > 0, got ", l.r));
  r.check(l.lora_alpha > 0, "lora.lora_alpha", str_cat("must be > 0, got ", number_text(l.lora_alpha)));
  r.check(l.lora_dropout >= 0 && l.lora_dropout < 1, "lora.lora_dropout",
          str_cat("must be in [0, 1), got ", number_text(l.lora_dropout)));
  const auto& tm = l.target_modules;
  const bool all_linear = std::find(tm.begin(), tm.end(), "all-linear") != tm.end();
  r.check(!tm.empty(), "lora.target_modules", "must name at least one module");
  r.check(!all_linear || tm.size() == 1, "lora.target_modules", "all-linear cannot be combined with names");
  for (size_t i = 0; i < tm.size(); ++i) {
    r.check(std::find(tm.begin(), tm.begin() + i, tm[i]) == tm.begin() + i, "lora.target_modules",
            "'" + tm[i] + "' is listed twice");
  }
  if (l.init_seed) r.check(*l.init_seed >= 0, "lora.init_seed", str_cat("must be >= 0, got ", *l.init_seed));

  const TrainingConfig& t = c.training;
  if (t.max_steps <= 0) {
    r.check(t.num_train_epochs > 0, "training.num_train_epochs",
            str_cat("must be > 0 when max_steps is -1, got ", number_text(t.num_train_epochs)));
  }
  r.check(t.max_steps == -1 || t.max_steps > 0, "training.max_steps",
          str_cat("must be -1 (use num_train_epochs) or > 0, got ", t.max_steps));
  r.check(t.per_device_train_batch_size >= 1, "training.per_device_train_batch_size",
          str_cat("must be >= 1, got ", t.per_device_train_batch_size));
  r.check(t.gradient_accumulation_steps >= 1, "training.gradient_accumulation_steps",
          str_cat("must be >= 1, got ", t.gradient_accumulation_steps));
  r.check(t.learning_rate >= 0, "training.learning_rate",
          str_cat("must be >= 0, got ", number_text(t.learning_rate)));
  r.check(t.warmup_ratio >= 0 && t.warmup_ratio <= 1, "training.warmup_ratio",
          str_cat("must be in [0, 1], got ", number_text(t.warmup_ratio)));
  r.check(t.warmup_steps >= 0, "training.warmup_steps", str_cat("must be >= 0, got ", t.warmup_steps));
  r.check(t.max_grad_norm >= 0, "training.max_grad_norm",
          str_cat("must be >= 0 (0 = no clipping), got ", number_text(t.max_grad_norm)));
  r.check(t.weight_decay >= 0, "training.weight_decay", str_cat("must be >= 0, got ", number_text(t.weight_decay)));
  r.check(t.adam_beta1 >= 0 && t.adam_beta1 < 1, "training.adam_beta1",
          str_cat("must be in [0, 1), got ", number_text(t.adam_beta1)));
  r.check(t.adam_beta2 >= 0 && t.adam_beta2 < 1, "training.adam_beta2",
          str_cat("must be in [0, 1), got ", number_text(t.adam_beta2)));
  r.check(t.adam_epsilon > 0, "training.adam_epsilon", str_cat("must be > 0, got ", number_text(t.adam_epsilon)));
  r.check(!(t.fp16 && t.bf16), "training.fp16",
          "fp16 and bf16 are both true " + r.other("training.bf16") + "; set one to false");
  // The Trainer's flag decides the compute dtype (compute_dtype()). bnb keeps bnb_4bit_compute_dtype only for
  // fp16 activations (SPEC.md §3.6): fp16 with bfloat16 would round activations through bf16 before an fp16
  // GEMM, so it is refused; float32 with fp16 and any value with bf16 or f32 follow the flag, as in bnb.
  r.check(!(t.fp16 && c.quantization.bnb_4bit_compute_dtype == "bfloat16"), "training.fp16",
          "fp16: true conflicts with bnb_4bit_compute_dtype: bfloat16 " +
              r.other("quantization.bnb_4bit_compute_dtype") + "; set it to float16");
  if (t.logging_strategy == "steps") {
    r.check(t.logging_steps >= 1, "training.logging_steps", str_cat("must be >= 1, got ", t.logging_steps));
  }
  if (t.save_strategy == "steps") {
    r.check(t.save_steps >= 1, "training.save_steps", str_cat("must be >= 1, got ", t.save_steps));
  }
  if (t.checkpoint_layers) {
    r.check(*t.checkpoint_layers >= 0, "training.checkpoint_layers",
            str_cat("must be >= 0 or null (all layers), got ", *t.checkpoint_layers));
    r.check(t.gradient_checkpointing, "training.checkpoint_layers",
            "is set but training.gradient_checkpointing is false");
  }
  if (t.save_total_limit) {
    r.check(*t.save_total_limit >= 1, "training.save_total_limit",
            str_cat("must be >= 1 or null, got ", *t.save_total_limit));
  }
  r.check(t.seed >= 0, "training.seed", str_cat("must be >= 0, got ", t.seed));
  r.check(t.ddp_timeout > 0, "training.ddp_timeout", str_cat("must be > 0, got ", number_text(t.ddp_timeout)));
}

}  // namespace

// ---- TrainConfig ------------------------------------------------------------------------------------------

TrainConfig TrainConfig::parse(const std::string& yaml_text, const std::string& source_name,
                               const std::vector<std::string>& overrides) {
  TrainConfig c;
  Reader r(source_name);
  r.read_yaml(c, yaml_text);
  for (const auto& kv : overrides) r.apply_override(c, kv);
  // the notebook's resume_from_checkpoint=True / False: the newest checkpoint / none
  std::string& resume = c.training.resume_from_checkpoint;
  if (resume == "true" || resume == "True") resume = "latest";
  if (resume == "false" || resume == "False") resume.clear();
  validate(c, r);
  r.throw_if_errors();
  return c;
}

TrainConfig TrainConfig::load(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read config file '" + path + "'");
  std::stringstream text;
  text << in.rdbuf();
  return parse(text.str(), path, overrides);
}

std::string TrainConfig::to_yaml() const {
  YAML::Emitter e;
  e << YAML::Comment("resolved train_gemma config: every key, defaults included (train_gemma --help lists them)");
  e << YAML::BeginMap;
  for (const std::string& sec : sections()) {
    e << YAML::Key << sec << YAML::Value << YAML::BeginMap;
    for (const Field& f : fields()) {
      if (f.section() != sec) continue;
      e << YAML::Key << f.leaf() << YAML::Value;
      f.emit(*this, e);
    }
    e << YAML::EndMap;
  }
  e << YAML::EndMap;
  ENGINE_CHECK(e.good(), "to_yaml: ", e.GetLastError());
  return std::string(e.c_str()) + "\n";
}

void TrainConfig::save_yaml(const std::string& path) const { write_file_atomic(path, to_yaml()); }

void TrainConfig::print_table(std::ostream& os) const {
  const TrainConfig defaults;
  size_t width = 0;
  for (const Field& f : fields()) width = std::max(width, f.key.size());
  for (const Field& f : fields()) {
    const std::string v = f.show(*this);
    os << "  " << f.key << std::string(width + 2 - f.key.size(), ' ') << v
       << (v == f.show(defaults) ? "  (default)" : "") << "\n";
  }
}

std::string TrainConfig::help_text() {
  const TrainConfig defaults;
  size_t kw = 0, tw = 0, dw = 0;
  for (const Field& f : fields()) {
    kw = std::max(kw, f.key.size());
    tw = std::max(tw, f.type.size());
    dw = std::max(dw, f.required ? 8 : f.show(defaults).size());
  }
  const auto pad = [](const std::string& s, size_t w) { return s + std::string(w + 2 - s.size(), ' '); };
  std::string s = "Config keys (YAML: under their section; command line: section.key=value):\n";
  s += "  " + pad("key", kw) + pad("type", tw) + pad("default", dw) + "meaning\n";
  for (const Field& f : fields()) {
    s += "  " + pad(f.key, kw) + pad(f.type, tw) + pad(f.required ? "required" : f.show(defaults), dw) + f.doc;
    if (!f.allowed.empty()) s += " (one of: " + join(f.allowed, ", ") + ")";
    s += "\n";
  }
  return s;
}

DType TrainConfig::compute_dtype() const {
  if (training.fp16) return DType::kF16;
  if (training.bf16) return DType::kBF16;
  return DType::kF32;
}

std::vector<std::string> TrainConfig::lora_targets() const {
  const auto& tm = lora.target_modules;
  if (tm.size() == 1 && tm[0] == "all-linear") return kLinearModules;
  std::vector<std::string> out;
  for (const auto& m : kLinearModules) {
    if (std::find(tm.begin(), tm.end(), m) != tm.end()) out.push_back(m);
  }
  return out;
}

double TrainConfig::lora_scaling() const {
  return lora.use_rslora ? lora.lora_alpha / std::sqrt(double(lora.r)) : lora.lora_alpha / double(lora.r);
}

int64_t TrainConfig::total_optimizer_steps(int64_t num_samples) const {
  ENGINE_CHECK(num_samples > 0, "total_optimizer_steps: the data set is empty");
  if (training.max_steps > 0) return training.max_steps;
  const int64_t bs = training.per_device_train_batch_size, ga = training.gradient_accumulation_steps;
  const int64_t batches = (num_samples + bs - 1) / bs;  // drop_last=False
  const int64_t per_epoch = std::max<int64_t>((batches + ga - 1) / ga, 1);
  return int64_t(std::ceil(training.num_train_epochs * double(per_epoch)));
}

int64_t TrainConfig::num_warmup_steps(int64_t total_steps) const {
  if (training.warmup_steps > 0) return training.warmup_steps;
  return int64_t(std::ceil(double(total_steps) * training.warmup_ratio));
}

}  // namespace engine
