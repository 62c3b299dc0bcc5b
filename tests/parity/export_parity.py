#!/usr/bin/env python3
"""tests/parity/export_parity.py: merged-adapter exports (tools/export_merged) loaded by transformers.

For a random tiny Gemma2ForCausalLM (eager attention) and a peft LoRA adapter with random B, the script runs
export_merged and loads the result with AutoModelForCausalLM.from_pretrained (no peft), then compares
  16bit_f32     --base 16bit --dtype f32: transformers(export) logits vs this engine's base + adapter logits
                (gemma_dump --adapter), and the exported weights vs peft's merge_and_unload() weights;
  16bit_shards  the same with --shard-size-mb 0.02: transformers reads the shards through the index;
  nf4_f32       --base nf4 --compute-dtype f32 --dtype f32: transformers(export) logits vs this engine's
                NF4 base + adapter logits (gemma_dump --nf4 --adapter): the export is the trained QLoRA model;
  16bit_bf16    a bf16 base, --dtype bf16: the weights vs peft's f32 merge rounded to bf16 (within one bf16
                ulp), config.json's torch_dtype, and the logits of the export upcast to f32 vs this engine's
                f32 base + adapter (loose: the merged weights are rounded to bf16, the unmerged ones are not).

  python3 tests/parity/export_parity.py --export build/export_merged --dump build/gemma_dump [--backends cpu,cuda]
Exit status 1 when a comparison exceeds its tolerance.
"""
import argparse, json, os, subprocess, sys, tempfile

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hf_oracle import folder_tensors, gemma2_model, padded_batch, rel

# D, F, L, H, KV, HD, V, T, window
DIMS = (64, 128, 2, 4, 2, 16, 101, 11, 8)
TOL = 2e-4       # max |diff| / max |ref|, f32 on both sides
TOL_BF16 = 3e-2  # logits of a bf16-rounded merge vs the unmerged f32 model
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_model(seed):
    D, F, L, H, KV, HD, V, T, W = DIMS
    return gemma2_model(D, F, L, H, KV, HD, V, W, seed)


def make_batch(seed):
    return padded_batch(DIMS[6], DIMS[7], seed)


def hf_logits(export_dir, ids, mask, real, dtype=torch.float32):
    m = AutoModelForCausalLM.from_pretrained(export_dir, torch_dtype=dtype, attn_implementation="eager")
    with torch.no_grad():
        lg = m(input_ids=ids, attention_mask=mask).logits.float()
    return lg.reshape(-1, lg.shape[-1])[real], m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", required=True, help="build/export_merged")
    ap.add_argument("--dump", required=True, help="build/gemma_dump")
    ap.add_argument("--backends", default="cpu,cuda")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    from peft import LoraConfig, get_peft_model

    tmp = tempfile.mkdtemp()
    ids, mask, labels = make_batch(7)
    real = mask.flatten().bool()
    bfile = os.path.join(tmp, "batch.json")
    with open(bfile, "w") as f:
        json.dump({"B": 2, "T": DIMS[7], "ids": ids.flatten().tolist(), "attention_mask": mask.flatten().tolist(),
                   "labels": labels.flatten().tolist()}, f)

    def base_and_adapter(tag, dtype):
        mdir, adir = os.path.join(tmp, tag + "_base"), os.path.join(tmp, tag + "_adapter")
        make_model(11).to(dtype).save_pretrained(mdir, safe_serialization=True)
        pm = get_peft_model(make_model(11), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none",
                                                       task_type="CAUSAL_LM", target_modules=TARGETS))
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
        pm.save_pretrained(adir)
        # peft's own merge, in f32 on the f32 base (for the bf16 case: of the base as stored, upcast).
        base = make_model(11).to(dtype).float()
        pm2 = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none",
                                              task_type="CAUSAL_LM", target_modules=TARGETS))
        pm2.load_state_dict({k: v for k, v in pm.state_dict().items() if "lora_" in k}, strict=False)  # adapters only
        merged = {k: v.detach().clone() for k, v in pm2.merge_and_unload().state_dict().items()}
        return mdir, adir, merged

    def run(cmd, backend):
        if backend == "cpu":
            cmd = cmd + ["--cpu"]
        subprocess.run(cmd, check=True)

    def dump(mdir, adir, backend, extra, tag):
        out = os.path.join(tmp, f"{tag}_{backend}_dump.st")
        run([args.dump, "--model", mdir, "--batch", bfile, "--out", out, "--adapter", adir] + extra, backend)
        return load_file(out)["logits"][real]

    f32 = base_and_adapter("f32", torch.float32)
    bf16 = base_and_adapter("bf16", torch.bfloat16)
    results, ok = [], True
    for backend in args.backends.split(","):
        mdir, adir, merged = f32
        # 16bit_f32 and 16bit_shards
        ours = dump(mdir, adir, backend, [], "f32")
        for case, extra in [("16bit_f32", []), ("16bit_shards", ["--shard-size-mb", "0.02"])]:
            edir = os.path.join(tmp, f"{case}_{backend}")
            run([args.export, "--model", mdir, "--adapter", adir, "--out", edir, "--base", "16bit", "--dtype", "f32"]
                + extra, backend)
            hf, _ = hf_logits(edir, ids, mask, real)
            w = folder_tensors(edir)
            worst = max((rel(w[k], merged[k]) + (k,) for k in merged if k in w), key=lambda t: t[1])
            row = {"case": case, "backend": backend, "logits": rel(hf, ours), "weights_vs_peft_merge": worst}
            if case == "16bit_shards":
                n = len([f for f in os.listdir(edir) if f.endswith(".safetensors")])
                row["shards"] = n
                ok &= n > 1 and os.path.exists(os.path.join(edir, "model.safetensors.index.json"))
            ok &= row["logits"][1] < TOL and worst[1] < 1e-5
            results.append(row)

        # nf4_f32: the export reproduces this engine's QLoRA model.
        edir = os.path.join(tmp, f"nf4_f32_{backend}")
        run([args.export, "--model", mdir, "--adapter", adir, "--out", edir, "--base", "nf4", "--compute-dtype", "f32",
             "--dtype", "f32"], backend)
        hf, _ = hf_logits(edir, ids, mask, real)
        ours_nf4 = dump(mdir, adir, backend, ["--nf4"], "nf4")
        row = {"case": "nf4_f32", "backend": backend, "logits": rel(hf, ours_nf4),
               "nf4_vs_16bit_logits": rel(ours_nf4, ours)}  # informational: the quantization's effect
        ok &= row["logits"][1] < TOL
        results.append(row)

        # 16bit_bf16: a bf16 base exported in bf16.
        mdir, adir, merged = bf16
        edir = os.path.join(tmp, f"16bit_bf16_{backend}")
        run([args.export, "--model", mdir, "--adapter", adir, "--out", edir, "--base", "16bit", "--dtype", "bf16"],
            backend)
        with open(os.path.join(edir, "config.json")) as f:
            cfg_dtype = json.load(f).get("torch_dtype")
        w = folder_tensors(edir)
        # One bf16 ulp: f32 sums in a different order may round W' to the neighbouring bf16 value.
        ulp_ok, worst = True, (0.0, 0.0, "")
        for k, ref in merged.items():
            if k not in w:
                continue
            got, want = w[k].float(), ref.to(torch.bfloat16).float()
            ulp_ok &= w[k].dtype == torch.bfloat16 and bool(((got - want).abs() <= want.abs() * 2 ** -7 + 1e-30).all())
            r = rel(got, want) + (k,)
            worst = max(worst, r, key=lambda t: t[1])
        hf, m = hf_logits(edir, ids, mask, real, dtype="auto")
        hf32, _ = hf_logits(edir, ids, mask, real, dtype=torch.float32)
        ours_bf16 = dump(mdir, adir, backend, [], "bf16")
        row = {"case": "16bit_bf16", "backend": backend, "logits": rel(hf32, ours_bf16), "weights_vs_peft_merge": worst,
               "torch_dtype": cfg_dtype, "loaded_dtype": str(m.dtype), "bf16_compute_logits": rel(hf, ours_bf16)}
        ok &= ulp_ok and cfg_dtype == "bfloat16" and m.dtype == torch.bfloat16 and row["logits"][1] < TOL_BF16
        results.append(row)

    f = lambda t: f"{t[0]:.2e}/{t[1]:.2e}"
    print(f"{'case':14} {'backend':7} {'logits abs/rel':>20}  details")
    for r in results:
        extra = {k: (f(v) + (f" {v[2]}" if len(v) > 2 else "") if isinstance(v, tuple) else v)
                 for k, v in r.items() if k not in ("case", "backend", "logits")}
        print(f"{r['case']:14} {r['backend']:7} {f(r['logits']):>20}  {extra}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    print("EXPORT PARITY", "OK" if ok else "FAILED",
          f"(logits tolerance {TOL} relative to max |ref|; {TOL_BF16} for the bf16 export)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
