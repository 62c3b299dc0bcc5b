#!/usr/bin/env python3
"""tests/parity/nf4_bnb_parity.py: byte-for-byte parity of the engine's NF4 (ops/nf4.*) with bitsandbytes.

For each case it quantizes a random weight with
    bitsandbytes.functional.quantize_4bit(W, blocksize=64, compress_statistics=True, quant_type="nf4")
writes the input and bnb's arrays to a case folder, runs the engine side (the gtest Nf4Gpu.BnbParityFiles in
build/gpu_tests, which reads/writes that folder through NF4_PARITY_DIR), and compares every array.

Must be identical (exit status 1 otherwise):
  - the NF4 table and the dynamic map in ops/nf4.h vs bnb's quant_state.code / state2.code
  - packed 4-bit codes (engine CUDA quantize vs bnb)
  - 8-bit absmax codes and absmax2 when the engine is given bnb's offset (Nf4QuantParams::offset_given)
  - dequantize_4bit of bnb's arrays (engine CUDA and engine CPU) vs bnb's dequantize_4bit
  - the engine's own offset, absmax codes, absmax2 and dequantization: only when its offset equals bnb's
Reported only: the offset's ulp distance (torch's mean vs the engine's fixed-order f64 mean, SPEC.md §3.8)
and the CPU quantizer's code differences (IEEE reciprocal vs bnb's approximate one).

Usage (on a GPU machine with torch + bitsandbytes, after building gpu_tests):
    python3 tests/parity/nf4_bnb_parity.py --bin build/gpu_tests [--workdir /tmp/nf4_parity] [--quick]
"""
import argparse
import os
import re
import subprocess
import sys

import numpy as np
import torch
import bitsandbytes as bnb
import bitsandbytes.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}
# 16-bit outputs are compared as their bit patterns
BITS = {"f16": np.uint16, "bf16": np.uint16, "f32": np.uint32}

CASES = [  # rows, cols, dtype
    (2048, 2304, "f16"), (2048, 2304, "bf16"), (9216, 2304, "f16"), (9216, 2304, "bf16"),
    (2304, 9216, "bf16"), (1024, 2304, "f32"), (7, 9, "f16"), (3, 1001, "bf16"), (1, 64 * 256 + 67, "f16"),
]
QUICK = [(2048, 2304, "f16"), (2048, 2304, "bf16"), (7, 9, "f16"), (3, 1001, "bf16")]


def header_table(name):
    """The uint32 bit patterns of `name` in ops/nf4.h."""
    text = open(os.path.join(REPO, "ops", "nf4.h")).read()
    body = re.search(name + r"\[\d+\] = \{(.*?)\};", text, re.S).group(1)
    return np.array([int(h, 16) for h in re.findall(r"0x[0-9a-fA-F]+", body)], dtype=np.uint32)


def raw(t):
    return t.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()


def save(path, t):
    raw(t).tofile(path)


def load(path, dtype):
    return np.fromfile(path, dtype=np.uint8).view(dtype)


def diff(name, ours, ref, must, failures):
    if ours.shape != ref.shape:
        print(f"    {name:34s} SHAPE {ours.shape} vs {ref.shape}")
        if must:
            failures.append(name)
        return
    bad = int(np.count_nonzero(ours != ref))
    tag = "ok" if bad == 0 else ("MISMATCH" if must else "differs (allowed)")
    print(f"    {name:34s} {bad:>9d} of {ref.size:<9d} differ  {tag}")
    if bad and must:
        failures.append(name)


def nibbles(packed):
    return np.stack([packed >> 4, packed & 0xF], axis=1).reshape(-1)


def run_case(rows, cols, dts, args, seed, failures):
    name = f"r{rows}_c{cols}_{dts}"
    case_dir = os.path.join(args.workdir, name)
    os.makedirs(case_dir, exist_ok=True)
    g = torch.Generator(device="cuda").manual_seed(seed)
    # Weight-like values with a spread of row scales, so absmax varies across blocks.
    w = torch.randn(rows, cols, generator=g, device="cuda") * 0.02
    w = w * torch.exp(0.5 * torch.randn(rows, 1, generator=g, device="cuda"))
    w = w.to(DTYPES[dts])
    packed, qs = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    deq = F.dequantize_4bit(packed, qs)
    assert deq.dtype == w.dtype and tuple(deq.shape) == (rows, cols)

    with open(os.path.join(case_dir, "meta.txt"), "w") as f:
        f.write(f"{rows} {cols} {dts}\n")
    save(os.path.join(case_dir, "w.bin"), w)
    save(os.path.join(case_dir, "bnb_packed.bin"), packed)
    save(os.path.join(case_dir, "bnb_absmax_q.bin"), qs.absmax)
    save(os.path.join(case_dir, "bnb_absmax2.bin"), qs.state2.absmax.float())
    save(os.path.join(case_dir, "bnb_offset.bin"), qs.offset.float().reshape(1))

    env = dict(os.environ, NF4_PARITY_DIR=case_dir)
    r = subprocess.run([args.bin, "--gtest_filter=Nf4Gpu.BnbParityFiles"], env=env, capture_output=True, text=True)
    if r.returncode != 0 or "[  PASSED  ] 1 test" not in r.stdout or "SKIPPED" in r.stdout:
        print(r.stdout[-3000:], r.stderr[-3000:])
        failures.append(f"{name}: engine run")
        return

    print(f"  {name}")
    p = lambda f: os.path.join(case_dir, f)  # noqa: E731
    ref_packed = raw(packed)
    diff("tables: NF4 code", raw(qs.code.float()).view(np.uint32), header_table("kNf4CodeBits"), True, failures)
    diff("tables: dynamic map", raw(qs.state2.code.float()).view(np.uint32), header_table("kDynamicMapBits"), True,
         failures)
    diff("packed (cuda)", load(p("ours_packed.bin"), np.uint8), ref_packed, True, failures)
    n = rows * cols
    diff("4-bit codes (cpu, IEEE reciprocal)", nibbles(load(p("ours_cpu_packed.bin"), np.uint8))[:n],
         nibbles(ref_packed)[:n], False, failures)

    ref_off = raw(qs.offset.float().reshape(1)).view(np.uint32)
    our_off = load(p("ours_offset.bin"), np.uint32)
    ulps = abs(int(our_off[0].view(np.int32)) - int(ref_off[0].view(np.int32)))
    print(f"    {'offset':34s} ours {our_off.view(np.float32)[0]!r} bnb {ref_off.view(np.float32)[0]!r}: {ulps} ulp")
    same_offset = ulps == 0
    ref_aq, ref_a2 = raw(qs.absmax), raw(qs.state2.absmax.float()).view(np.uint32)
    diff("absmax_q (cuda, bnb's offset)", load(p("ours_given_absmax_q.bin"), np.uint8), ref_aq, True, failures)
    diff("absmax2 (cuda, bnb's offset)", load(p("ours_given_absmax2.bin"), np.uint32), ref_a2, True, failures)
    diff("absmax_q (cpu, bnb's offset)", load(p("ours_cpu_given_absmax_q.bin"), np.uint8), ref_aq, False, failures)
    diff("absmax_q (cuda, own offset)", load(p("ours_absmax_q.bin"), np.uint8), ref_aq, same_offset, failures)
    diff("absmax2 (cuda, own offset)", load(p("ours_absmax2.bin"), np.uint32), ref_a2, same_offset, failures)

    bits = BITS[dts]
    ref_deq = raw(deq).view(bits)
    diff("dequant of bnb state (cuda)", load(p("ours_dequant_bnbstate.bin"), bits), ref_deq, True, failures)
    diff("dequant of bnb state (cpu)", load(p("ours_cpu_dequant_bnbstate.bin"), bits), ref_deq, True, failures)
    diff("dequant of own state (cuda)", load(p("ours_dequant.bin"), bits), ref_deq, same_offset, failures)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(REPO, "build", "gpu_tests"), help="the gpu_tests binary")
    ap.add_argument("--workdir", default="/tmp/nf4_parity", help="case folders go here")
    ap.add_argument("--quick", action="store_true", help="four cases instead of nine")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("nf4_bnb_parity: needs a CUDA device")
    print(f"bitsandbytes {bnb.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name()}")
    failures = []
    for i, (rows, cols, dts) in enumerate(QUICK if args.quick else CASES):
        run_case(rows, cols, dts, args, 1000 + i, failures)
    if failures:
        print("FAILED:", ", ".join(failures))
        sys.exit(1)
    print("all required arrays identical")


if __name__ == "__main__":
    main()
