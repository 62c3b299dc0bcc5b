#!/usr/bin/env bash
# tools/demo/make_tokenizer.sh: rebuilds tools/demo/tokenizer.model, the demo's small Gemma-like
# SentencePiece BPE model, from tools/demo/chat_ja.jsonl. Needs python3 and the Debian package
# `sentencepiece` (spm_train). Deterministic: the same data gives the same model byte for byte.
#
# Training text: every record rendered with Gemma's chat template, one line of the rendering per
# spm sentence (spm cannot hold "\n" inside a sentence; newlines encode through byte fallback <0x0A>):
#   <start_of_turn>user\n{system}\n\n{user}<end_of_turn>\n<start_of_turn>model\n{assistant}<end_of_turn>\n
# (the system prompt, when there is one, goes in front of the first user turn, as Gemma has no
# system role).  Usage: tools/demo/make_tokenizer.sh [vocab_size]   (default 2000)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
vocab="${1:-2000}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

python3 - "$here/chat_ja.jsonl" "$tmp/corpus.txt" <<'PY'
import json, sys
src, dst = sys.argv[1], sys.argv[2]
with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8", newline="\n") as out:
    for line in f:
        msgs = json.loads(line)["messages"]
        system = ""
        if msgs and msgs[0]["role"] == "system":
            system, msgs = msgs[0]["content"], msgs[1:]
        text = ""
        for i, m in enumerate(msgs):
            role = {"user": "user", "assistant": "model"}[m["role"]]
            content = m["content"]
            if i == 0 and system:
                content = system + "\n\n" + content
            text += "<start_of_turn>" + role + "\n" + content + "<end_of_turn>\n"
        out.write(text)
PY

# relative names: the model stores --input and --model_prefix in its trainer_spec
(cd "$tmp" && spm_train --input=corpus.txt --model_prefix=tokenizer \
  --model_type=bpe --vocab_size="$vocab" --character_coverage=0.9995 --byte_fallback=true \
  --user_defined_symbols='<start_of_turn>,<end_of_turn>' \
  --pad_id=0 --eos_id=1 --bos_id=2 --unk_id=3 \
  --pad_piece='<pad>' --eos_piece='<eos>' --bos_piece='<bos>' --unk_piece='<unk>' \
  --normalization_rule_name=identity --add_dummy_prefix=false --split_digits=true \
  --remove_extra_whitespaces=false \
  --input_sentence_size=0 --shuffle_input_sentence=false --random_seed=22 --num_threads=1 \
  --minloglevel=1)
cp "$tmp/tokenizer.model" "$here/tokenizer.model"
echo "wrote $here/tokenizer.model (vocab_size $vocab)"
