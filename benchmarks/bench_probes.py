"""Cost and baseline values of the general-ability probes on SmolLM2-135M.

For each ``--tokens`` count: `GeneralAbilityProbe.record` (once per run, on the unedited model; its cost is
about one plain forward pass over the windows) and one `probe` of the same unedited model, timed (their ratio is
the probe's overhead over a forward pass, less sensitive to a shared CPU's load than the seconds), with its perplexity and KL (which must be ~0: the stored
reference reproduces the unedited distributions). Then, on ``--check-tokens`` tokens, one MLP matrix is
perturbed and the probe's KL is compared with the KL computed from a full unedited copy's logits (the error of
the stored-reference scheme on the real model).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_probes.py --tokens 5000 20000 --threads 1

Writes ``benchmarks/results/probes.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

from _common import add_output_args, pin_threads, write_result  # benchmarks/ is on sys.path; loads no numpy/torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[5000, 20000], help="probe token counts to time")
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--check-tokens", type=int, default=1024, help="tokens for the KL check against a full copy (0 = skip)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data-dir", default=None)
    add_output_args(p, "probes.json")
    return p.parse_args(argv)


ARGS = parse_args()
pin_threads(ARGS.threads)  # before torch loads its BLAS

import copy  # noqa: E402
import math  # noqa: E402

import torch  # noqa: E402

from prune_lit.metrics.intervals import bootstrap_interval, paired_bootstrap  # noqa: E402
from prune_lit.metrics.probes import GeneralAbilityProbe, kl_from_logits  # noqa: E402
from prune_lit.models.arch import arch_spec, get_weight, num_layers, set_weight  # noqa: E402
from prune_lit.models.loader import load_model  # noqa: E402


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def main() -> None:
    out: dict = {"started": now(), "argv": os.sys.argv[1:], "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
                 "loadavg_at_start": os.getloadavg(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                 "model": ARGS.model, "window": ARGS.window, "batch_size": ARGS.batch_size, "runs": []}
    lm = load_model(ARGS.model)
    model, tok = lm.model, lm.tokenizer
    for n in ARGS.tokens:
        t0 = time.perf_counter()
        probe = GeneralAbilityProbe.record(model, tok, n, ARGS.window, data_dir=ARGS.data_dir, batch_size=ARGS.batch_size)
        record_s = time.perf_counter() - t0
        r = probe.probe(model)
        row = {"num_tokens": n, "predicted_tokens": r.n_tokens, "windows": probe.windows.shape[0], "record_s": record_s,
               "probe_s": r.seconds, "probe_tokens_per_s": r.tokens_per_s, "probe_over_record": r.seconds / record_s, "perplexity": r.perplexity, "nll": r.nll,
               "kl_from_unedited": r.kl_from_unedited, "max_window_kl": max(abs(k) for k in r.window_kl),
               "reference_mb": probe.reference_hidden.numel() * 4 / 2**20}
        # How precisely this many tokens pin down the perplexity on their own (windows resampled); comparisons of
        # two models on the same windows are paired and tighter.
        ci = bootstrap_interval(r.window_nll, seed=0)
        row.update(perplexity_low=math.exp(ci.low), perplexity_high=math.exp(ci.high), window_nll_sd=float(torch.tensor(r.window_nll).std()))
        out["runs"].append(row)
        print(json.dumps(row), flush=True)
    if ARGS.check_tokens:
        unedited = copy.deepcopy(model)
        probe = GeneralAbilityProbe.record(unedited, tok, ARGS.check_tokens, ARGS.window, data_dir=ARGS.data_dir, batch_size=ARGS.batch_size)
        name = arch_spec(model).mlp_out_name(num_layers(model) // 2) + ".weight"
        w0 = get_weight(model, name).clone()
        # Noise of the weights' own scale on one middle MLP matrix: a clearly edited model, not a broken one.
        set_weight(model, name, w0 + w0.std() * torch.randn(w0.shape, generator=torch.Generator().manual_seed(0)))
        r = probe.probe(model)
        paired = paired_bootstrap(probe.probe(unedited).window_nll, r.window_nll, seed=0)
        with torch.inference_mode():
            direct = torch.cat([kl_from_logits(unedited(input_ids=w[None]).logits[:, :-1], model(input_ids=w[None]).logits[:, :-1])
                                for w in probe.windows]).mean().item()
        set_weight(model, name, w0)
        out["reference_check"] = {"matrix": name, "num_tokens": ARGS.check_tokens, "perturbed_perplexity": r.perplexity,
                                  "probe_kl": r.kl_from_unedited, "direct_kl": direct,
                                  "nll_difference_paired": paired.as_dict(),
                                  "relative_error": abs(r.kl_from_unedited - direct) / max(abs(direct), 1e-12)}
        print(json.dumps(out["reference_check"]), flush=True)
    out["finished"] = now()
    out["loadavg_at_end"] = os.getloadavg()
    write_result(ARGS.out, out)


if __name__ == "__main__":
    main()
