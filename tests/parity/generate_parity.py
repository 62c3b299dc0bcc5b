#!/usr/bin/env python3
"""tests/parity/generate_parity.py: greedy generation of this engine (chat_gemma) against transformers/peft.

For each case the script builds a random tiny Gemma2ForCausalLM (eager attention, f32, like gemma2_parity.py),
saves it in the HF layout, and compares the greedy continuation of a token-id prompt for NEW tokens:
  - oracle: transformers' generate(do_sample=False) without a cache (use_cache=False: every step is the plain
    full forward, the semantics this engine's KV cache must reproduce); transformers' cached generate is run
    too and reported (it should agree; a difference there is transformers' cache, not ours);
  - ours: chat_gemma --prompt-ids ... --print-ids --ignore-eos --max-new-tokens NEW --dtype f32 [--cpu];
both without and with a peft LoRA adapter (random B, dropout 0; chat_gemma --adapter). EOS is ignored on both
sides (generation_config.eos_token_id = None) so every run compares NEW tokens. A sliding window smaller than
the sequence makes the sliding layers drop keys during decoding.

A mismatch at a step where the oracle's top two logits are within TIE of each other is reported as a tie
(summation-order noise can flip it) and ends the comparison for that run without failing it; any other
mismatch fails. No tokenizer is needed.

  python3 tests/parity/generate_parity.py --chat build/chat_gemma [--backends cpu,cuda] [--new 60]
Exit status 1 on a mismatch.
"""
import argparse, os, subprocess, sys, tempfile

import torch

from hf_oracle import gemma2_model

CASES = [
    # name, D, F, L, H, KV, HD, V, window, prompt length
    ("gqa2_window8", 64, 96, 2, 4, 2, 24, 101, 8, 7),
    ("mha_nowindow", 48, 80, 3, 4, 4, 12, 97, 4096, 5),
    ("gqa4_window6", 64, 128, 2, 8, 2, 16, 113, 6, 9),
]
TIE = 1e-4


def make_model(case, seed):
    name, D, F, L, H, KV, HD, V, W, _ = case
    # Norm weights (scale 1 + w) of std 2 let the layers, not the tied embedding's echo of the last input token,
    # pick the next token: greedy output varies instead of repeating one token (as the C++ tests found).
    model = gemma2_model(D, F, L, H, KV, HD, V, W, seed, w_std=0.3, norm_std=2.0)
    model.eval()
    return model


def hf_generate(model, prompt, new, use_cache):
    model.generation_config.eos_token_id = None  # fixed-length runs, as chat_gemma --ignore-eos
    model.generation_config.pad_token_id = 0
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=new, use_cache=use_cache, temperature=None,
                             top_p=None, top_k=None)
    return out[0, len(prompt):].tolist()


def top2_gap(model, seq):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
    top = torch.topk(logits.double(), 2).values
    return (top[0] - top[1]).item()


def run_chat(args, model_dir, prompt, backend, adapter):
    cmd = [args.chat, "--model", model_dir, "--prompt-ids", ",".join(map(str, prompt)), "--print-ids", "--raw",
           "--ignore-eos", "--max-new-tokens", str(args.new), "--dtype", "f32"]
    if adapter:
        cmd += ["--adapter", adapter]
    if backend == "cpu":
        cmd.append("--cpu")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    lines = [l for l in out.splitlines() if l.startswith("ids: ")]
    if not lines:
        raise RuntimeError(f"no 'ids:' line in chat_gemma's output:\n{out}")
    return [int(x) for x in lines[-1][5:].split(",") if x]


def compare(model, prompt, ref, ours):
    """(status, first mismatch index or None, detail)"""
    for i, (a, b) in enumerate(zip(ref, ours)):
        if a != b:
            gap = top2_gap(model, prompt + ref[:i])
            return ("TIE" if gap < TIE else "MISMATCH"), i, f"step {i}: ref {a} ours {b}, oracle top-2 gap {gap:.2e}"
    if len(ref) != len(ours):
        return "MISMATCH", min(len(ref), len(ours)), f"lengths {len(ref)} vs {len(ours)}"
    return "OK", None, ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chat", required=True, help="path to chat_gemma")
    ap.add_argument("--backends", default="cpu,cuda")
    ap.add_argument("--new", type=int, default=60, help="new tokens per run (>= 50)")
    args = ap.parse_args()
    ok = True
    tmp = tempfile.mkdtemp()
    rows = []
    for ci, case in enumerate(CASES):
        name, V, plen = case[0], case[7], case[9]
        model = make_model(case, 300 + ci)
        mdir = os.path.join(tmp, name)
        model.save_pretrained(mdir, safe_serialization=True)
        g = torch.Generator().manual_seed(400 + ci)
        prompt = [2] + torch.randint(3, V, (plen - 1,), generator=g).tolist()

        from peft import LoraConfig, get_peft_model
        pm = get_peft_model(make_model(case, 300 + ci),
                            LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                                       target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                       "up_proj", "down_proj"]))
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
        pm.eval()
        adir = os.path.join(tmp, name + "_adapter")
        pm.save_pretrained(adir)

        for kind, m, adapter in (("base", model, None), ("lora", pm, adir)):
            ref = hf_generate(m, prompt, args.new, use_cache=False)
            cached = hf_generate(m, prompt, args.new, use_cache=True)
            hf_cache_note = "hf cache agrees" if cached == ref else "hf cache DIFFERS from hf no-cache"
            for backend in args.backends.split(","):
                ours = run_chat(args, mdir, prompt, backend, adapter)
                status, at, detail = compare(m, prompt, ref, ours)
                ok &= status != "MISMATCH"
                note = f"{hf_cache_note}; {len(set(ref))} distinct tokens"
                rows.append((name, kind, backend, status, len(ref) if at is None else at, detail, note))

    print(f"{'case':14} {'kind':5} {'backend':7} {'status':8} {'equal':>5}  detail")
    for name, kind, backend, status, n, detail, note in rows:
        print(f"{name:14} {kind:5} {backend:7} {status:8} {n:5d}  {detail} ({note})")
    print("GENERATE PARITY", "OK" if ok else "FAILED", f"({args.new} new tokens per run)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
