#!/usr/bin/env python3
"""tests/parity/bnb_checkpoint_parity.py: checkpoints already quantized to 4 bits by bitsandbytes (transformers'
save_pretrained of a BitsAndBytesConfig(load_in_4bit) model), loaded by this engine (models/bnb_checkpoint.h).

For each case a random tiny Gemma2ForCausalLM (hf_oracle, eager attention) is saved dense in the case's dtype,
loaded by transformers with BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype) and written with save_pretrained: a real bnb-4bit
checkpoint ("hf_q"). Then, for each backend of this engine:
  arrays    gemma_dump --nf4 --dump-nf4 on hf_q: every linear's packed codes, absmax codes, absmax2 and offset as
            loaded equal the checkpoint's weight, weight.absmax, weight.nested_absmax and the quant_state JSON's
            nested_offset byte for byte (the loader copies them; nothing is requantized)
  logits    transformers' 4-bit model reloaded from hf_q (its pre-quantized loading path) against gemma_dump --nf4
            on hf_q, real tokens of a right-padded batch: max|diff|/max|ref| < TOL[dtype]
  dense     gemma_dump without --nf4 on hf_q (the loader dequantizes to the compute dtype) against the same
            oracle, same tolerance
and once (CUDA) for this engine's writer:
  writer    quantize_bnb4 on the dense folder ("ours_q"); transformers loads it (pre-quantized) and its
            Params4bit arrays equal our file's byte for byte, and its logits match gemma_dump --nf4 on ours_q
  codes     reported only: how many packed / absmax codes our quantizer shares with bitsandbytes' on the same
            weights (the offset is a mean in another summation order, SPEC.md §3.8, so a difference is allowed)

  PYTHONPATH=.dev/bnb python3 tests/parity/bnb_checkpoint_parity.py --dump build/gemma_dump \
      --quantize build/quantize_bnb4 [--backends cpu,cuda] [--json out.json]
Exit status 1 when a comparison fails.
"""
import argparse, json, os, subprocess, sys, tempfile, traceback

import numpy as np
import torch

from hf_oracle import folder_tensors, gemma2_model, padded_batch, rel, run_dump

CASES = [
    # name, D, F, L, H, KV, HD, V, T, window, dtype
    ("small_bf16", 64, 128, 2, 4, 2, 16, 101, 11, 8, "bf16"),
    ("chunks_bf16", 128, 320, 2, 4, 2, 32, 97, 9, 4096, "bf16"),  # 640 blocks per MLP weight: 3 absmax2 chunks
    ("small_f32", 64, 128, 2, 4, 2, 16, 101, 11, 8, "f32"),       # f32 dequantization is bit-identical: tight
]
DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32}
TOL = {"bf16": 2e-2, "f32": 2e-4}  # max |diff| / max |ref| of the logits
TARGETS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj"]
QS = ".quant_state.bitsandbytes__nf4"


def bnb_config(dtype):
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def hf_load(path, dtype, quantize):
    from transformers import AutoModelForCausalLM
    kw = dict(dtype=dtype, attn_implementation="eager", device_map={"": 0})
    if quantize:
        kw["quantization_config"] = bnb_config(dtype)
    return AutoModelForCausalLM.from_pretrained(path, **kw).eval()


def quant_state(st, w):
    return json.loads(bytes(st[w + QS].numpy().tobytes()).decode("utf-8"))


def bits(t):
    """Raw bytes of a tensor as a flat uint8 array."""
    return t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()


def linears(L):
    return [f"model.layers.{i}.{t}.weight" for i in range(L) for t in TARGETS]


def compare_arrays(dump, st, names, failures, tag):
    """The engine's loaded NF4 arrays (gemma_dump --dump-nf4) against a bnb checkpoint's, byte for byte."""
    bad = []
    for w in names:
        qs = quant_state(st, w)
        want = {
            "packed": bits(st[w]),
            "absmax_q": bits(st[w + ".absmax"]),
            "absmax2": bits(st[w + ".nested_absmax"].float()),
            "offset": np.array([qs["nested_offset"]], dtype=np.float32).view(np.uint8),
        }
        for part, ref in want.items():
            got = bits(dump[f"nf4.{w}.{part}"])
            if got.shape != ref.shape or not np.array_equal(got, ref):
                bad.append(f"{w}.{part}")
    print(f"    {tag:44s} {len(names) * 4 - len(bad):3d} of {len(names) * 4} arrays identical"
          + ("" if not bad else "  MISMATCH: " + ", ".join(bad[:6])))
    if bad:
        failures.append(tag)


def check_logits(name, got, ref, tol, failures, results, **extra):
    a, r = rel(got, ref)
    ok = r < tol
    print(f"    {name:44s} abs {a:.3e} rel {r:.3e} (tol {tol:g})  {'ok' if ok else 'FAILED'}")
    results.append(dict(check=name, abs=a, rel=r, tol=tol, ok=ok, **extra))
    if not ok:
        failures.append(name)


def run_case(case, ci, args, tmp, failures, results):
    name, D, F, L, H, KV, HD, V, T, W, dts = case
    dtype, tol = DTYPES[dts], TOL[dts]
    print(f"== {name}: D={D} F={F} L={L} H={H} KV={KV} HD={HD} V={V} T={T} window={W} {dts}")
    dense_dir, hf_q = os.path.join(tmp, name + "_dense"), os.path.join(tmp, name + "_hf_q")
    gemma2_model(D, F, L, H, KV, HD, V, W, seed=300 + ci).to(dtype).save_pretrained(dense_dir)
    m = hf_load(dense_dir, dtype, quantize=True)  # transformers quantizes each Linear with bitsandbytes
    m.save_pretrained(hf_q)
    del m
    st = folder_tensors(hf_q)
    names = linears(L)
    w0 = names[0]
    print("    saved:", sorted(k[len(w0):] or "<weight>" for k in st if k.startswith(w0)))
    print("    quant_state:", quant_state(st, w0))
    cfg = json.load(open(os.path.join(hf_q, "config.json")))
    print("    quantization_config:", json.dumps(cfg.get("quantization_config")))

    ids, mask, labels = padded_batch(V, T, seed=400 + ci)
    real = mask.flatten().bool()
    bfile = os.path.join(tmp, name + "_batch.json")
    with open(bfile, "w") as f:
        json.dump({"B": 2, "T": T, "ids": ids.flatten().tolist(), "attention_mask": mask.flatten().tolist(),
                   "labels": labels.flatten().tolist()}, f)

    def hf_logits(model):
        with torch.no_grad():
            lg = model(input_ids=ids.cuda(), attention_mask=mask.cuda()).logits.float().cpu()
        return lg.reshape(-1, lg.shape[-1])[real]

    oracle = hf_load(hf_q, dtype, quantize=False)  # pre-quantized: quantization_config comes from config.json
    ref = hf_logits(oracle)
    del oracle
    torch.cuda.empty_cache()

    for backend in args.backends.split(","):
        d = run_dump(args, hf_q, bfile, os.path.join(tmp, f"{name}_{backend}_nf4.st"), backend,
                     ["--nf4", "--dump-nf4", "--dtype", dts])
        compare_arrays(d, st, names, failures, f"{name} {backend}: loaded arrays == hf_q")
        check_logits(f"{name} {backend}: logits (--nf4) vs transformers", d["logits"][real], ref, tol, failures,
                     results, case=name, backend=backend)
        d = run_dump(args, hf_q, bfile, os.path.join(tmp, f"{name}_{backend}_dense.st"), backend, ["--dtype", dts])
        check_logits(f"{name} {backend}: logits (dequantized) vs transformers", d["logits"][real], ref, tol,
                     failures, results, case=name, backend=backend)

    # This engine's writer: transformers must read our bnb checkpoint as we do.
    ours_q = os.path.join(tmp, name + "_ours_q")
    subprocess.run([args.quantize, "--model", dense_dir, "--out", ours_q, "--dtype", dts], check=True)
    ours = folder_tensors(ours_q)
    hm = hf_load(ours_q, dtype, quantize=False)
    bad = []
    for w in names:
        mod = hm.get_submodule(w[: -len(".weight")])
        p = mod.weight
        qs = p.quant_state
        if (p.__class__.__name__ != "Params4bit" or not np.array_equal(bits(p.data), bits(ours[w]))
                or not np.array_equal(bits(qs.absmax), bits(ours[w + ".absmax"]))
                or not np.array_equal(bits(qs.state2.absmax.float()), bits(ours[w + ".nested_absmax"]))
                or not np.array_equal(bits(qs.offset.float().reshape(1)),
                                      np.array([quant_state(ours, w)["nested_offset"]], np.float32).view(np.uint8))
                or tuple(qs.shape) != tuple(quant_state(ours, w)["shape"]) or qs.blocksize != 64
                or qs.quant_type != "nf4"):
            bad.append(w)
    print(f"    {name + ': transformers reads ours_q as written':44s} "
          f"{len(names) - len(bad)} of {len(names)} weights identical" + (f"  MISMATCH: {bad[:4]}" if bad else ""))
    if bad:
        failures.append(f"{name}: transformers reads ours_q")
    ref_ours = hf_logits(hm)
    del hm
    torch.cuda.empty_cache()
    d = run_dump(args, ours_q, bfile, os.path.join(tmp, f"{name}_ours_q.st"), "cuda", ["--nf4", "--dtype", dts])
    check_logits(f"{name} cuda: logits on ours_q vs transformers", d["logits"][real], ref_ours, tol, failures,
                 results, case=name, backend="cuda")

    # Reported only: our quantizer (CUDA) against bitsandbytes' on the same weights.
    same = {"packed": 0, "absmax": 0}
    total = {"packed": 0, "absmax": 0}
    offset_ulps = []
    for w in names:
        for k, key in (("packed", w), ("absmax", w + ".absmax")):
            a, b = bits(ours[key]), bits(st[key])
            same[k] += int(np.count_nonzero(a == b))
            total[k] += a.size
        oa = np.array([quant_state(ours, w)["nested_offset"]], np.float32).view(np.int32)[0]
        ob = np.array([quant_state(st, w)["nested_offset"]], np.float32).view(np.int32)[0]
        offset_ulps.append(abs(int(oa) - int(ob)))
    print(f"    {name + ': our quantizer vs bitsandbytes (info)':44s} packed bytes {same['packed']}/{total['packed']}"
          f" absmax codes {same['absmax']}/{total['absmax']} offsets: max {max(offset_ulps)} ulp")
    results.append(dict(check=f"{name}: codes shared with bitsandbytes", packed=[same["packed"], total["packed"]],
                        absmax=[same["absmax"], total["absmax"]], max_offset_ulps=max(offset_ulps)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dump", required=True, help="build/gemma_dump")
    ap.add_argument("--quantize", required=True, help="build/quantize_bnb4")
    ap.add_argument("--backends", default="cpu,cuda")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bnb_checkpoint_parity: needs a CUDA device (bitsandbytes quantizes on the GPU)")
    import bitsandbytes
    import transformers
    print(f"transformers {transformers.__version__}, bitsandbytes {bitsandbytes.__version__}, torch {torch.__version__}"
          f", {torch.cuda.get_device_name()}")
    tmp = tempfile.mkdtemp(prefix="bnb_parity_")
    failures, results = [], []
    for ci, case in enumerate(CASES):
        try:
            run_case(case, ci, args, tmp, failures, results)
        except Exception:  # report and go on: one broken case must not hide the others
            traceback.print_exc()
            failures.append(f"{case[0]}: exception")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print("PARITY", "OK" if not failures else "FAILED: " + "; ".join(failures), f"(folders in {tmp})")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
