#!/usr/bin/env python3
"""bench/compare_hf.py: the Python stack this engine replaces, timed on the same shape as tools/bench_train.

The notebook's recipe (SPEC.md §0.2) on a random Gemma-2: transformers Gemma2ForCausalLM (eager attention)
loaded with BitsAndBytesConfig(load_in_4bit, nf4, double quant, compute dtype), peft LoRA r=4 alpha 8
dropout 0.1 on all seven linears (get_peft_model, no prepare_model_for_kbit_training), transformers Trainer
with paged_adamw_32bit, lr 5e-4 cosine, warmup 0.03 (a ratio: warmup_steps < 1 in transformers 5.x),
max_grad_norm 0.3, weight_decay 0.001, fp16 or bf16 mixed precision, per-device batch B, grad accum GA, on
random full-length token rows (no padding, labels = input_ids).

How the random 4-bit model is made: a bf16 Gemma2ForCausalLM is created from the config (transformers'
own init: N(0, 0.02) linears and embedding, zero norms), saved once with save_pretrained into --cache-dir,
and then loaded with from_pretrained(quantization_config=...), exactly the notebook's loading path
(transformers quantizes each Linear to bnb Linear4bit/Params4bit while loading). This is the simplest
route that works unchanged across transformers versions: replace_with_bnb_linear only swaps the module
classes and leaves the weight loading and quantization to from_pretrained anyway. The checkpoint is reused
by later runs of the same shape (run_compare.sh runs one configuration per process).

Timing: a TrainerCallback synchronizes at each optimizer step's end (on_step_end) and takes the median of
the step-to-step wall times after --warmup steps; tokens/s = B*T*GA / median. The split uses CUDA events
(no extra syncs): forward = compute_loss (includes the LM head and the loss: there is no separate head
phase), backward = the rest of training_step, optimizer = last backward end -> on_optimizer_step (clip +
paged AdamW). Memory: torch.cuda.max_memory_allocated (whole process, model load included), plus the paged
optimizer state (bnb allocates it with cudaMallocManaged, outside torch's allocator), plus
cudaMemGetInfo-based device use at the end.

  PYTHONPATH=.dev/bnb python3 bench/compare_hf.py --batch 1 --seq 512 --grad-accum 4 --dtype f16
  python3 bench/compare_hf.py --table results.jsonl     # side-by-side table of bench_train + this script
Prints one summary line and one JSON line in bench_train's format ("stack": "hf").
"""
import argparse, json, os, statistics, sys, time

PRESETS = {
    "gemma2-2b": dict(hidden=2304, intermediate=9216, layers=26, heads=8, kv_heads=4, head_dim=256, vocab=256000),
    "tiny": dict(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, head_dim=16, vocab=512),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peak_dense_flops(name):
    """Dense 16-bit tensor-core peak, the same table as engine/device_info.cpp (ANCHORS.md §3)."""
    if any(k in name for k in ("H100", "H200", "H800")):
        if "PCIe" in name:
            return 756e12, f"datasheet ({name})"
        if "NVL" in name:
            return 835e12, f"datasheet ({name})"
        return 989.4e12, f"datasheet ({name})"
    if "A100" in name or "A800" in name:
        return 312e12, f"datasheet ({name})"
    return 0.0, "unknown card"


def flops_per_token(s, seq, n_lora, ckpt):
    """ANCHORS.md §4, eager attention (c = 1); the same as models::train_flops_per_token."""
    D, F, L, H, KV, HD, V = (s[k] for k in ("hidden", "intermediate", "layers", "heads", "kv_heads", "head_dim", "vocab"))
    n_lin = L * (2 * D * H * HD + 2 * D * KV * HD + 3 * D * F)
    attn = L * H * HD * seq
    model = 4.0 * (n_lin + V * D) + 12.0 * attn + 6.0 * n_lora
    hw = model + ((2.0 * n_lin + 4.0 * attn + 2.0 * n_lora) if ckpt else 0.0)
    return model, hw


def config_json(a, shape, device):
    return {"stack": "hf", "device": device, "preset": a.preset, "hidden": shape["hidden"],
            "intermediate": shape["intermediate"], "layers": shape["layers"], "heads": shape["heads"],
            "kv_heads": shape["kv_heads"], "head_dim": shape["head_dim"], "vocab": shape["vocab"],
            "batch": a.batch, "seq": a.seq, "grad_accum": a.grad_accum, "dtype": a.dtype,
            "quant": "none" if a.no_quantize else "nf4", "rank": a.rank, "alpha": a.alpha, "dropout": a.dropout,
            "gradient_checkpointing": a.gradient_checkpointing, "steps": a.steps, "warmup": a.warmup}


def random_checkpoint(shape, cache_dir):
    """A random bf16 Gemma-2 of this shape in the HF layout, made once per shape."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM
    key = "gemma2_random_" + "_".join(str(shape[k]) for k in sorted(shape))
    path = os.path.join(cache_dir, key)
    if os.path.exists(os.path.join(path, "done")):
        return path
    cfg = Gemma2Config(vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                       num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                       num_key_value_heads=shape["kv_heads"], head_dim=shape["head_dim"],
                       query_pre_attn_scalar=shape["head_dim"], max_position_embeddings=8192, sliding_window=4096,
                       attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                       hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True, pad_token_id=0,
                       eos_token_id=1, bos_token_id=2, use_cache=False)
    torch.manual_seed(0)
    with torch.device("cuda"):  # initialise on the GPU: seconds instead of minutes for 2.6B parameters
        model = Gemma2ForCausalLM._from_config(cfg, attn_implementation="eager")
    model = model.to(device="cuda", dtype=torch.bfloat16)
    tmp = path + ".tmp"
    model.save_pretrained(tmp, safe_serialization=True)
    open(os.path.join(tmp, "done"), "w").close()
    if os.path.exists(path):  # an unfinished earlier attempt (no "done" marker)
        import shutil
        shutil.rmtree(path)
    os.replace(tmp, path)
    del model
    torch.cuda.empty_cache()
    return path


def run(a):
    import torch
    from torch.utils.data import Dataset
    from transformers import (AutoModelForCausalLM, BitsAndBytesConfig, Trainer, TrainerCallback,
                              TrainingArguments, set_seed)
    from peft import LoraConfig, get_peft_model

    shape = dict(PRESETS[a.preset])
    for k in shape:
        if getattr(a, k, None):
            shape[k] = getattr(a, k)
    if shape != PRESETS[a.preset]:
        a.preset += "+custom"  # bench_train's name for an overridden preset: the table pairs the two
    device = torch.cuda.get_device_name(0)
    out = config_json(a, shape, device)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float16
    total = a.warmup + a.steps
    try:
        set_seed(a.seed)
        ckpt_dir = random_checkpoint(shape, a.cache_dir)
        torch.cuda.reset_peak_memory_stats()
        t_build = time.perf_counter()
        kw = dict(dtype=dtype, attn_implementation="eager", device_map={"": 0})
        if not a.no_quantize:
            kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_use_double_quant=True,
                                                           bnb_4bit_compute_dtype=dtype)
        model = AutoModelForCausalLM.from_pretrained(ckpt_dir, **kw)
        model.config.use_cache = False
        model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=a.dropout, bias="none",
                                                 task_type="CAUSAL_LM", target_modules=TARGETS))
        n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)

        class RandomTokens(Dataset):
            def __init__(self, n):
                g = torch.Generator().manual_seed(a.seed)
                self.ids = torch.randint(0, shape["vocab"], (n, a.seq), generator=g)

            def __len__(self):
                return self.ids.shape[0]

            def __getitem__(self, i):
                return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]),
                        "labels": self.ids[i]}

        class Clock(TrainerCallback):
            """Step ends (synchronized) and CUDA events of each phase."""
            def __init__(self):
                self.ends, self.fwd, self.bwd, self.opt, self.pending = [], [], [], [], []
                self.fwd_end, self.last_bwd_end, self.skipped, self.losses, self.trainer = None, None, 0, [], None

            def on_optimizer_step(self, args, state, control, **kw):
                e = torch.cuda.Event(enable_timing=True)
                e.record()
                self.pending.append(("opt", self.last_bwd_end, e))

            def on_step_end(self, args, state, control, **kw):
                torch.cuda.synchronize()
                self.ends.append(time.perf_counter())
                ms = {"fwd": 0.0, "bwd": 0.0, "opt": 0.0}
                for kind, s, e in self.pending:
                    ms[kind] += s.elapsed_time(e) if s is not None else 0.0
                self.fwd.append(ms["fwd"])
                self.bwd.append(ms["bwd"])
                self.opt.append(ms["opt"])
                self.pending = []
                if self.trainer is not None and self.trainer.accelerator.optimizer_step_was_skipped:
                    self.skipped += 1

        clock = Clock()

        class TimedTrainer(Trainer):
            def compute_loss(self, *args, **kwargs):
                s = torch.cuda.Event(enable_timing=True)
                s.record()
                r = super().compute_loss(*args, **kwargs)
                e = torch.cuda.Event(enable_timing=True)
                e.record()
                clock.pending.append(("fwd", s, e))
                clock.fwd_end = e
                loss = r[0] if isinstance(r, tuple) else r
                # transformers 5.x: with num_items_in_batch the micro-batch loss is its share of the window's
                # mean (the window loss is the sum); without it, the micro-batch mean (the window's is the mean).
                shares = bool(getattr(self, "model_accepts_loss_kwargs", False)) and \
                    kwargs.get("num_items_in_batch") is not None
                clock.losses.append((loss.detach(), shares))
                return r

            def training_step(self, *args, **kwargs):
                r = super().training_step(*args, **kwargs)
                e = torch.cuda.Event(enable_timing=True)
                e.record()
                clock.pending.append(("bwd", clock.fwd_end, e))
                clock.last_bwd_end = e
                return r

        targs = dict(output_dir=os.path.join(a.cache_dir, "trainer_out"), per_device_train_batch_size=a.batch,
                     gradient_accumulation_steps=a.grad_accum, max_steps=total, learning_rate=5e-4,
                     lr_scheduler_type="cosine", warmup_steps=0.03, max_grad_norm=0.3, weight_decay=0.001,
                     optim="paged_adamw_32bit", fp16=a.dtype == "f16", bf16=a.dtype == "bf16",
                     logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
                     dataloader_num_workers=0, remove_unused_columns=False, seed=a.seed, gradient_checkpointing=a.gradient_checkpointing)
        if a.gradient_checkpointing:
            # Non-reentrant checkpointing needs no input grads (no prepare_model_for_kbit_training here).
            targs["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
        trainer = TimedTrainer(model=model, args=TrainingArguments(**targs),
                               train_dataset=RandomTokens(total * a.batch * a.grad_accum), callbacks=[clock])
        clock.trainer = trainer
        build_s = time.perf_counter() - t_build
        trainer.train()
        steps = [1e3 * (clock.ends[i] - clock.ends[i - 1]) for i in range(max(a.warmup, 1), len(clock.ends))]
        med = statistics.median(steps)
        tokens = a.batch * a.seq * a.grad_accum
        tps = tokens / (med * 1e-3)
        free_b, total_b = torch.cuda.mem_get_info()
        managed = 2 * n_lora * 4  # paged AdamW 32-bit m and v
        peak = torch.cuda.max_memory_allocated()
        model_f, hw_f = flops_per_token(shape, a.seq, n_lora, a.gradient_checkpointing)
        pk, src = peak_dense_flops(device)
        ga = a.grad_accum
        step_losses = []
        for i in range(0, len(clock.losses), ga):
            window = clock.losses[i:i + ga]
            total_l = sum(float(l) for l, _ in window)
            step_losses.append(total_l if window[0][1] else total_l / len(window))
        tm = lambda v: statistics.median(v[a.warmup:]) if len(v) > a.warmup else None
        gib = lambda b: b / 2**30
        out.update({"tokens_per_step": tokens, "tokens_per_s": tps, "step_ms": med, "forward_ms": tm(clock.fwd),
                    "head_ms": None, "backward_ms": tm(clock.bwd), "optimizer_ms": tm(clock.opt), "gpu_span_ms": None,
                    "step_ms_all": steps, "peak_alloc_gib": gib(peak), "managed_gib": gib(managed),
                    "peak_total_gib": gib(peak + managed), "device_used_gib": gib(total_b - free_b),
                    "peak_reserved_gib": gib(torch.cuda.max_memory_reserved()), "flops_per_token": model_f,
                    "hw_flops_per_token": hw_f, "n_lora": n_lora, "peak_tflops": pk * 1e-12, "peak_source": src,
                    "mfu": tps * model_f / pk if pk else 0.0, "hfu": tps * hw_f / pk if pk else 0.0,
                    "first_loss": step_losses[0] if step_losses else None,
                    "last_loss": step_losses[-1] if step_losses else None, "skipped_steps": clock.skipped,
                    "build_s": build_s})
        print(f"hf {device} | {a.preset} L{shape['layers']} D{shape['hidden']} | bs {a.batch} x GA {a.grad_accum} x "
              f"seq {a.seq} {a.dtype} {out['quant']}{' ckpt' if a.gradient_checkpointing else ''} | {tps:.0f} tok/s | "
              f"step {med:.1f} ms (fwd {out['forward_ms'] or 0:.1f}, bwd {out['backward_ms'] or 0:.1f}, "
              f"opt {out['optimizer_ms'] or 0:.1f}) | peak {gib(peak):.2f} GiB (+{gib(managed):.3f} managed, device "
              f"used {gib(total_b - free_b):.2f}) | MFU {100 * out['mfu']:.1f}% HFU {100 * out['hfu']:.1f}%")
        rc = 0
    except (torch.OutOfMemoryError, RuntimeError) as e:  # bnb's paged allocations raise RuntimeError
        if "out of memory" not in str(e).lower():
            raise
        out["error"] = "out of memory: " + str(e).split("\n")[0]
        rc = 1
    print(json.dumps(out))
    if a.json_out:
        with open(a.json_out, "a") as f:
            f.write(json.dumps(out) + "\n")
    return rc


def memory_mode(j):
    """'' for the modes both stacks have; else the engine's partial checkpointing / probability recompute, whose
    Python-stack reference is that stack's checkpointed run."""
    parts = []
    layers, rec = j.get("layers"), j.get("recomputed_layers")
    if j.get("gradient_checkpointing") and rec is not None and layers is not None and rec < layers:
        parts.append(f"ckpt {rec}/{layers} layers")
    if j.get("recompute_attention_probs"):
        parts.append("probs recomputed")
    return ", ".join(parts)


def table(path):
    """Markdown side-by-side table from bench_train and compare_hf JSON lines."""
    rows, order = {}, []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            j = json.loads(line)
            key = (j["preset"], j["batch"], j["seq"], j["grad_accum"], j["dtype"], j["quant"], j["gradient_checkpointing"],
                   memory_mode(j))
            if key not in rows:
                rows[key] = {}
                order.append(key)
            rows[key][j["stack"]] = j
    devices = sorted({j["device"] for r in rows.values() for j in r.values()})
    print(f"Card: {', '.join(devices)}")
    print()
    print("| config | engine tok/s | HF tok/s | speedup | engine peak GiB | HF peak GiB | engine MFU | HF MFU | "
          "engine fwd/head/bwd/opt ms | HF fwd/bwd/opt ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def cell(j, k, fmt):
        if j is None:
            return "—"
        if "error" in j:
            return "OOM" if "out of memory" in j["error"] else "error"
        v = j.get(k)
        return "—" if v is None else fmt.format(v)

    for key in order:
        e, h = rows[key].get("engine"), rows[key].get("hf")
        preset, B, T, GA, dt, q, ck, mode = key
        if mode:  # an engine-only memory mode: against the Python stack's checkpointed run of the same shape
            h = rows.get((preset, B, T, GA, dt, q, True, ""), {}).get("hf")
        name = f"{preset} bs{B} GA{GA} seq{T} {dt} {q}{' ckpt' if ck and 'ckpt ' not in mode else ''}{', ' + mode if mode else ''}"
        ok = lambda j: j is not None and "error" not in j
        speed = f"{e['tokens_per_s'] / h['tokens_per_s']:.2f}x" if ok(e) and ok(h) else "—"
        split_e = ("/".join(f"{e[k]:.0f}" for k in ("forward_ms", "head_ms", "backward_ms", "optimizer_ms"))
                   if ok(e) else cell(e, "", ""))
        split_h = ("/".join("—" if h[k] is None else f"{h[k]:.0f}" for k in ("forward_ms", "backward_ms", "optimizer_ms"))
                   if ok(h) else cell(h, "", ""))
        print(f"| {name} | {cell(e, 'tokens_per_s', '{:,.0f}')} | {cell(h, 'tokens_per_s', '{:,.0f}')} | {speed} | "
              f"{cell(e, 'peak_total_gib', '{:.2f}')} | {cell(h, 'peak_total_gib', '{:.2f}')} | "
              f"{cell(e, 'mfu', '{:.1%}')} | {cell(h, 'mfu', '{:.1%}')} | {split_e} | {split_h} |")
    print()
    print("peak GiB = allocator peak (engine allocator / torch.cuda.max_memory_allocated) + paged optimizer state; "
          "MFU = tokens/s x (4(N_lin+E) + 12 L d_attn T + 6 N_lora) / dense 16-bit peak (ANCHORS.md §4). "
          "HF forward includes the LM head and loss.")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", default="", help="print the side-by-side table from this JSON-lines file and exit")
    ap.add_argument("--preset", default="gemma2-2b", choices=sorted(PRESETS))
    for k in ("hidden", "intermediate", "layers", "heads", "kv_heads", "head_dim", "vocab"):
        ap.add_argument("--" + k.replace("_", "-"), dest=k, type=int, default=0, help=f"override the preset's {k}")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--grad-accum", type=int, default=4)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16"])
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=8)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--no-quantize", action="store_true", help="bf16/fp16 base weights (LoRA without NF4)")
    ap.add_argument("--cache-dir", default=os.environ.get("HF_BENCH_CACHE", "/tmp/hf_bench_cache"))
    ap.add_argument("--json-out", default="", help="also append the JSON line to this file")
    a = ap.parse_args()
    if a.table:
        table(a.table)
        return 0
    # warmup >= 1: step i is timed from step i-1's end, so the first step cannot be.
    for k, lo in (("batch", 1), ("seq", 2), ("grad_accum", 1), ("rank", 1), ("steps", 1), ("warmup", 1)):
        if getattr(a, k) < lo:
            ap.error(f"--{k.replace('_', '-')} must be >= {lo}, got {getattr(a, k)}")
    os.makedirs(a.cache_dir, exist_ok=True)
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
