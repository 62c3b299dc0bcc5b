"""tests/parity/hf_oracle.py: what the parity scripts share: random tiny Gemma-2 models made with transformers
(the oracle), a right-padded token batch, the error metric, running gemma_dump and reading checkpoint folders."""
import os
import subprocess

import torch
from safetensors.torch import load_file
from transformers import Gemma2Config, Gemma2ForCausalLM


def gemma2_model(D, F, L, H, KV, HD, V, W, seed, attn_cap=50.0, final_cap=30.0, w_std=0.15, norm_std=0.2):
    """A random Gemma2ForCausalLM (eager attention, f32): linear/embedding weights ~ N(0, w_std^2) and the
    RMSNorm weights w ~ N(0, norm_std^2) (scale 1 + w), so every part of the model matters."""
    cfg = Gemma2Config(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=L,
                       num_attention_heads=H, num_key_value_heads=KV, head_dim=HD, max_position_embeddings=512,
                       rms_norm_eps=1e-6, rope_theta=10000.0, attn_logit_softcapping=attn_cap,
                       final_logit_softcapping=final_cap, query_pre_attn_scalar=HD, sliding_window=W,
                       hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True, pad_token_id=0,
                       eos_token_id=1, bos_token_id=2)
    torch.manual_seed(seed)
    model = Gemma2ForCausalLM._from_config(cfg, attn_implementation="eager").float()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.normal_(0, norm_std if "norm" in n else w_std)
    return model


def padded_batch(V, T, seed):
    """B=2: BOS then random ids; the second row right-padded by 3 (mask 0, label -100)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (2, T), generator=g)
    ids[:, 0] = 2
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, -3:] = 0
    ids[1, -3:] = 0
    labels = ids.clone()
    labels[mask == 0] = -100
    return ids, mask, labels


def run_dump(args, model_dir, bfile, out, backend, extra):
    """gemma_dump (args.dump) on a model folder and a batch file; its output tensors."""
    cmd = [args.dump, "--model", model_dir, "--batch", bfile, "--out", out] + extra
    if backend == "cpu":
        cmd.append("--cpu")
    subprocess.run(cmd, check=True)
    return load_file(out)


def folder_tensors(folder):
    """Every tensor of the *.safetensors files in a checkpoint folder."""
    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(folder, f)))
    return out


def rel(a, b):
    """(max |a - b|, max |a - b| / max |b|)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    d = (a - b).abs().max().item()
    return d, d / max(b.abs().max().item(), 1e-30)
