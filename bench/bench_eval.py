"""Evaluation throughput: ours vs the raw batched forward pass of the same model on the same batches
(goal ≥ 0.9) and vs a one-example-at-a-time loop (goal ≥ 20×), measured side by side in one run;
also length bucketing on vs off (the same examples batched in the split's order), and on CUDA the
half-precision (autocast) evaluation beside float32.

Also estimates the cost of MASSIVE's N×N zero-shot matrix (every one of 51 locale models on every
locale's test split, ~2,974 sentences each) from the measured throughput and model load time.
Tokenisation is once per (locale, split), sorted by length (length bucketing); the forward runs
under ``torch.inference_mode``.

    python bench/bench_eval.py [--device cuda] [--examples 1000] [--zoo /work/scale_zoo]
                               [--repeat 3] [--naive 200]
"""
import argparse
import os
import time

import numpy as np
import torch

from common import best_of, open_bench_workspace, print_table
from engine.evaluate import Encoded, autocast_dtype


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--zoo", default="")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per path (best of; +1 warm-up)")
    ap.add_argument("--naive", type=int, default=200, help="examples timed one at a time")
    args = ap.parse_args()
    ws = open_bench_workspace(args.device, args.zoo)
    ev = ws.evaluator
    locale = ws.zoo.locales[0]
    enc = ev.encoded(locale, "test")
    reps = max(1, args.examples // len(enc))
    split_order = [enc.input_ids[j] for j in np.argsort(enc.order)]  # as the split lists them
    enc.input_ids = enc.input_ids * reps  # same sorted-by-length shape of work, repeated
    enc.order = torch.arange(len(enc.input_ids)).numpy()
    n = len(enc.input_ids)
    unbucketed = Encoded(split_order * reps, np.arange(n), enc.labels, "unbucketed")
    t0 = time.perf_counter()
    model = ws.zoo.load_model(locale).to(ev.device).eval()
    t_load = time.perf_counter() - t0
    pad = ev.tokenizer.pad_token_id

    batches = []
    for lo in range(0, n, ev.batch_size):
        ids = torch.nn.utils.rnn.pad_sequence(enc.input_ids[lo:lo + ev.batch_size], batch_first=True,
                                              padding_value=pad).to(ev.device)
        batches.append((ids, (ids != pad).long()))

    def raw():
        with torch.inference_mode():
            for ids, mask in batches:
                model(input_ids=ids, attention_mask=mask).logits.float().cpu()
        if ev.device.type == "cuda":
            torch.cuda.synchronize()

    def ours():
        ev.forward(model, enc)

    def ours_unbucketed():
        ev.forward(model, unbucketed)

    half = autocast_dtype(ev.device, "auto")

    def ours_half():
        ev.half = half
        try:
            ev.forward(model, enc)
        finally:
            ev.half = None

    data = ws.dataset.get(locale, "test")
    texts = (data.texts * reps)[: min(n, args.naive)]

    def naive():
        with torch.inference_mode():
            for t in texts:
                x = ev.tokenizer(t, return_tensors="pt").to(ev.device)
                model(**x).logits.cpu()

    rep = args.repeat
    t_raw, t_ours = best_of(raw, rep), best_of(ours, rep)
    t_unb = best_of(ours_unbucketed, rep)
    t_naive = best_of(naive, repeat=1) * n / len(texts)
    pad_share = 1 - sum(len(x) for x in enc.input_ids) / sum(
        len(b) * max(len(x) for x in b) for b in (unbucketed.input_ids[lo:lo + ev.batch_size]
                                                  for lo in range(0, n, ev.batch_size)))
    rows = [
        {"path": "raw batched forward", "ex/s": f"{n / t_raw:,.1f}", "ratio vs raw": "1.00"},
        {"path": "ours (Evaluator.forward, bucketed)", "ex/s": f"{n / t_ours:,.1f}",
         "ratio vs raw": f"{t_raw / t_ours:.2f}"},
        {"path": f"ours, not bucketed ({100 * pad_share:.0f} % padding)", "ex/s": f"{n / t_unb:,.1f}",
         "ratio vs raw": f"{t_raw / t_unb:.2f}"},
        {"path": "one at a time", "ex/s": f"{n / t_naive:,.2f}", "ratio vs raw": f"{t_raw / t_naive:.3f}"},
    ]
    if half is not None:
        t_half = best_of(ours_half, rep)
        rows.insert(2, {"path": f"ours, {str(half).replace('torch.', '')} autocast",
                        "ex/s": f"{n / t_half:,.1f}", "ratio vs raw": f"{t_raw / t_half:.2f}"})
    print_table(rows, f"evaluation throughput — {ws.zoo.name}, {n} examples, batch {ev.batch_size}, "
                      f"device {ev.device}, {ws.zoo.parameter_count() / 1e6:.1f} M params")
    print(f"\nours / raw = {t_raw / t_ours:.2f} (goal ≥ 0.9); ours vs one-at-a-time = "
          f"{t_naive / t_ours:.1f}× (goal ≥ 20×); bucketing {t_unb / t_ours:.2f}× faster; "
          f"load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    locales, per_locale = 51, 2974
    forward_h = locales * locales * per_locale / (n / t_ours) / 3600
    load_h = locales * t_load / 3600
    tokens = sum(len(x) for x in enc.input_ids) / n
    print(f"MASSIVE N×N estimate: {locales}×{locales} pairs × {per_locale} sentences = "
          f"{locales * locales * per_locale / 1e6:.2f} M forward examples at {n / t_ours:,.1f} ex/s "
          f"= {forward_h:.1f} h + {locales} model loads × {t_load:.1f} s = {load_h * 60:.1f} min "
          f"(these sentences average {tokens:.1f} tokens; MASSIVE's are longer, ~12–15 with "
          f"specials, so read it as a lower bound)")


if __name__ == "__main__":
    main()
