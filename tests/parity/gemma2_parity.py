#!/usr/bin/env python3
"""tests/parity/gemma2_parity.py: this engine against transformers (and peft) on random tiny Gemma-2 models.

transformers and peft serve only as the oracle. For each case the script builds a random Gemma2ForCausalLM
(eager attention, f32), saves it in the HF layout, runs both stacks on the same right-padded token batch
and compares logits (real tokens), the mean token loss and the gradient of every parameter; then, with a
peft LoRA adapter (dropout 0, random B), the logits, loss and every LoRA gradient, and finally loads the
adapter as written back by this engine with PeftModel.from_pretrained and compares its logits with ours;
last, 5 optimizer steps on the batch (torch AdamW, transformers' cosine schedule with warmup, clip_grad_norm_)
against this engine's (bitsandbytes' AdamW order: decay after the update, a difference of order lr^2*wd).

  python3 tests/parity/gemma2_parity.py --dump build/gemma_dump [--backends cpu,cuda] [--json out.json]
Exit status 1 when a comparison exceeds its tolerance.
"""
import argparse, json, os, sys, tempfile

import torch

from hf_oracle import gemma2_model, padded_batch, rel, run_dump

CASES = [
    # name, D, F, L, H, KV, HD, V, T, window, attn cap, final cap
    ("hd24_gqa2_window", 64, 96, 2, 4, 2, 24, 101, 11, 8, 50.0, 30.0),
    ("gqa1_small_caps", 48, 80, 2, 4, 4, 12, 97, 9, 4096, 5.0, 3.0),
    ("gqa4", 64, 128, 2, 8, 2, 8, 113, 10, 6, 50.0, 30.0),
    ("odd_3layers", 40, 72, 3, 2, 1, 20, 257, 13, 5, 50.0, 30.0),
]
TOL = 2e-4  # max |diff| / max |ref| per tensor, f32 on both sides
STEPS, LR, WARMUP, CLIP, WD = 5, 1e-2, 1, 0.3, 0.001


def make_model(case, seed):
    name, D, F, L, H, KV, HD, V, T, W, acap, fcap = case
    return gemma2_model(D, F, L, H, KV, HD, V, W, seed, attn_cap=acap, final_cap=fcap)


def batch(case, seed):
    return padded_batch(case[7], case[8], seed)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True)
    ap.add_argument("--backends", default="cpu,cuda")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    results, ok = [], True
    tmp = tempfile.mkdtemp()
    for ci, case in enumerate(CASES):
        name, T = case[0], case[8]
        model = make_model(case, 100 + ci)
        mdir = os.path.join(tmp, name)
        model.save_pretrained(mdir, safe_serialization=True)
        ids, mask, labels = batch(case, 200 + ci)
        bfile = os.path.join(tmp, name + ".json")
        with open(bfile, "w") as f:
            json.dump({"B": 2, "T": T, "ids": ids.flatten().tolist(), "attention_mask": mask.flatten().tolist(),
                       "labels": labels.flatten().tolist()}, f)
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        real = mask.flatten().bool()
        ref_logits = out.logits.reshape(-1, out.logits.shape[-1])[real]
        ref_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

        # LoRA through peft on the same base.
        from peft import LoraConfig, PeftModel, get_peft_model
        base = make_model(case, 100 + ci)
        lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        pm = get_peft_model(base, lcfg)
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
        adir = os.path.join(tmp, name + "_adapter")
        pm.save_pretrained(adir)
        pm.zero_grad()
        pout = pm(input_ids=ids, attention_mask=mask, labels=labels)
        pout.loss.backward()
        ref_plogits = pout.logits.reshape(-1, pout.logits.shape[-1])[real]
        ref_lgrads = {n.replace(".default", ""): p.grad.clone() for n, p in pm.named_parameters() if "lora_" in n}

        # N optimizer steps with torch AdamW + transformers' schedule + clipping, from the same adapter.
        from transformers import get_cosine_schedule_with_warmup
        lora_params = [p for n, p in pm.named_parameters() if "lora_" in n]
        opt = torch.optim.AdamW(lora_params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
        sched = get_cosine_schedule_with_warmup(opt, WARMUP, STEPS)
        ref_step_losses = []
        for _ in range(STEPS):
            opt.zero_grad()
            l = pm(input_ids=ids, attention_mask=mask, labels=labels).loss
            l.backward()
            torch.nn.utils.clip_grad_norm_(lora_params, CLIP)
            opt.step()
            sched.step()
            ref_step_losses.append(l.item())
        ref_after = {n.replace(".default", ""): p.detach().clone() for n, p in pm.named_parameters() if "lora_" in n}

        for backend in args.backends.split(","):
            d = run_dump(args, mdir, bfile, os.path.join(tmp, f"{name}_{backend}.st"), backend, ["--train-base"])
            row = {"case": name, "backend": backend, "kind": "full"}
            row["logits"] = rel(d["logits"][real], ref_logits)
            row["loss"] = rel(d["loss_sum"] / d["n_valid"], out.loss.reshape(1))
            worst = (0.0, 0.0, "")
            for n, g in ref_grads.items():
                key = "grad." + ("model.embed_tokens.weight" if n == "lm_head.weight" else n)
                a, r = rel(d[key].reshape(g.shape), g)
                if r > worst[1]:
                    worst = (a, r, n)
            row["grads_worst"] = worst
            ok &= max(row["logits"][1], row["loss"][1], worst[1]) < TOL
            results.append(row)

            adir2 = os.path.join(tmp, f"{name}_{backend}_ours")
            d = run_dump(args, mdir, bfile, os.path.join(tmp, f"{name}_{backend}_lora.st"), backend,
                         ["--adapter", adir, "--save-adapter", adir2, "--steps", str(STEPS), "--lr", str(LR),
                          "--warmup", str(WARMUP), "--max-grad-norm", str(CLIP), "--weight-decay", str(WD)])
            row = {"case": name, "backend": backend, "kind": "lora"}
            row["logits"] = rel(d["logits"][real], ref_plogits)
            row["loss"] = rel(d["loss_sum"] / d["n_valid"], pout.loss.reshape(1))
            worst = (0.0, 0.0, "")
            for n, g in ref_lgrads.items():
                a, r = rel(d["grad." + n].reshape(g.shape), g)
                if r > worst[1]:
                    worst = (a, r, n)
            row["grads_worst"] = worst
            # peft loads the adapter this engine wrote: its logits must match ours.
            reload = PeftModel.from_pretrained(make_model(case, 100 + ci), adir2)
            with torch.no_grad():
                rl = reload(input_ids=ids, attention_mask=mask).logits.reshape(-1, ref_plogits.shape[-1])[real]
            row["peft_reload_logits"] = rel(d["logits"][real], rl)
            row["step_losses"] = rel(d["step_losses"], torch.tensor(ref_step_losses))
            pw = (0.0, 0.0, "")
            for n, p in ref_after.items():
                a, r = rel(d["param." + n].reshape(p.shape), p)
                if r > pw[1]:
                    pw = (a, r, n)
            row["params_after_steps"] = pw
            ok &= max(row["logits"][1], row["loss"][1], worst[1], row["peft_reload_logits"][1]) < TOL
            ok &= max(row["step_losses"][1], pw[1]) < 1e-3  # AdamW decay order differs (see docstring)
            results.append(row)

    print(f"{'case':18} {'backend':5} {'kind':5} {'logits abs/rel':>22} {'loss abs/rel':>22} {'worst grad abs/rel':>22}  worst tensor / peft reload")
    for r in results:
        f = lambda t: f"{t[0]:.2e}/{t[1]:.2e}"
        extra = r["grads_worst"][2]
        if "peft_reload_logits" in r:
            extra += (f"  reload {f(r['peft_reload_logits'])}  {STEPS} steps: losses {f(r['step_losses'])}"
                      f" params {f(r['params_after_steps'])}")
        print(f"{r['case']:18} {r['backend']:5} {r['kind']:5} {f(r['logits']):>22} {f(r['loss']):>22} "
              f"{f(r['grads_worst']):>22}  {extra}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print("PARITY", "OK" if ok else "FAILED", f"(tolerance {TOL} relative to max |ref|)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
