#!/usr/bin/env python3
"""Per-kernel time breakdown of a bench_train run, from Nsight Compute.

Runs `ncu` (one metric: gpu__time_duration.sum, clocks left alone) on the given
bench_train command line and prints the kernels grouped by family, with their
count, total and share. ncu serialises kernels, so the totals are kernel time,
not wall time: kernels that overlap on side streams are counted in full.

  python3 bench/kernel_breakdown.py --ncu ncu -- ./bench_train --layers 2 \
      --steps 1 --warmup 0 --grad-accum 1 --quiet

With --csv FILE an existing `ncu --csv --print-units base` log is read instead.
"""
import argparse
import collections
import csv
import io
import re
import subprocess
import sys

SETUP = "model build (left out)"  # bench_train's random weights and their quantization, before the first step

# Families, first match wins. cuBLASLt's kernels have vendor names (nvjet_*,
# sm90_xmma_*, cutlass*), ours are named after their op file.
FAMILIES = [
    (SETUP, r"random_normal_fill|nf4_quantize|nf4_double_quant|nf4_offset"),
    ("gemm (cuBLASLt)", r"nvjet|xmma|cutlass|gemm|splitK|Kernel2"),
    ("nf4 dequantize", r"nf4_"),
    ("lora", r"lora_"),
    ("attention softmax", r"attention_softmax"),
    ("attention layout + rope", r"attention_permute|attention_rope"),
    ("rmsnorm (+ residual)", r"rmsnorm"),
    ("rope", r"rope"),
    ("geglu", r"geglu"),
    ("dropout", r"dropout"),
    ("lm head + ce", r"lm_head|softcap"),
    ("embedding", r"embedding"),
    ("adamw + clip", r"adamw|sumsq|clip"),
    ("elementwise", r"unary|binary"),
]


def family(name):
    for fam, pattern in FAMILIES:
        if re.search(pattern, name):
            return fam
    return "other"


def parse(text):
    """Yields (kernel name, microseconds) for every kernel in an ncu CSV log."""
    start = text.find('"ID"')
    if start < 0:
        sys.exit("kernel_breakdown: no ncu CSV table in the output (did ncu profile anything?)")
    for row in csv.DictReader(io.StringIO(text[start:])):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(row["Metric Value"].replace(",", ""))
        unit = row.get("Metric Unit", "ns")
        scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}.get(unit)
        if scale is None:
            sys.exit(f"kernel_breakdown: unexpected time unit '{unit}'")
        yield row["Kernel Name"], value * scale


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ncu", default="ncu", help="ncu executable")
    ap.add_argument("--csv", help="read this ncu CSV log instead of running ncu")
    ap.add_argument("--save", help="also write ncu's CSV log here")
    ap.add_argument("--kernels", type=int, default=25, help="rows in the per-kernel table")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- bench_train command line")
    a = ap.parse_args()
    if a.csv:
        text = open(a.csv).read()
    else:
        cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
        if not cmd:
            ap.error("give a command after --, or --csv")
        ncu = [a.ncu, "--clock-control", "none", "--csv", "--print-units", "base",
               "--print-kernel-base", "function", "--metrics", "gpu__time_duration.sum"]
        done = subprocess.run(ncu + cmd, capture_output=True, text=True)
        text = done.stdout
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-4000:])
            sys.exit(f"kernel_breakdown: ncu exited with {done.returncode}")
        if a.save:
            open(a.save, "w").write(text)

    by_family = collections.defaultdict(lambda: [0, 0.0])
    by_kernel = collections.defaultdict(lambda: [0, 0.0])
    setup = [0, 0.0]
    for name, us in parse(text):
        if family(name) == SETUP:
            setup[0] += 1
            setup[1] += us
            continue
        by_family[family(name)][0] += 1
        by_family[family(name)][1] += us
        by_kernel[name][0] += 1
        by_kernel[name][1] += us
    total = sum(v[1] for v in by_family.values())
    count = sum(v[0] for v in by_family.values())
    print(f"| family | kernels | total us | share |\n|---|---|---|---|")
    for fam, (n, us) in sorted(by_family.items(), key=lambda kv: -kv[1][1]):
        print(f"| {fam} | {n} | {us:.1f} | {100 * us / total:.1f}% |")
    print(f"| all | {count} | {total:.1f} | 100% |\n")
    print(f"({SETUP}: {setup[0]} kernels, {setup[1]:.1f} us)\n")
    print(f"| kernel | count | total us | mean us |\n|---|---|---|---|")
    for name, (n, us) in sorted(by_kernel.items(), key=lambda kv: -kv[1][1])[: a.kernels]:
        print(f"| {name[:70]} | {n} | {us:.1f} | {us / n:.2f} |")


if __name__ == "__main__":
    main()
