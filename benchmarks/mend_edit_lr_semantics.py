"""MEND's edit learning rates trained as the reference trainer does (``edit_lrs_lr: lr``) or at ``lr_lr``.

Two hypernetworks from the same initialisation take the same optimizer steps (configs/mend.yaml settings:
rank 512, lr 1e-5, c_loc 3, 4 single edits per step, cached hidden states) on the same CounterFact train
requests, interleaved; per step the train loss and the 9 edit lrs are recorded, and at the end both are scored
on ``--val`` CounterFact val cases (single edits: val/loss, edit success, locality).

    python benchmarks/mend_edit_lr_semantics.py --steps 100   # -> benchmarks/results/mend_edit_lr_semantics.json, one thread
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from _common import add_output_args, machine_meta, pin_threads, portable, write_result  # benchmarks/ is on sys.path

from prune_lit.data.edit_datamodule import load_edit_requests
from prune_lit.modules.mend_training import MENDTraining


def score(module: MENDTraining, val: list, batch: int = 4) -> dict[str, float]:
    """Single-edit validation numbers, as `MENDTraining.validation_step` logs them (means over cases)."""
    logged: dict[str, list[float]] = {}
    module.log = lambda name, value, **kw: logged.setdefault(name, []).append(float(value))  # type: ignore[method-assign]
    module.eval()
    for i in range(0, len(val), batch):
        module.validation_step(val[i : i + batch], i // batch)
    module.train()
    del module.log
    return {k: statistics.fmean(v) for k, v in logged.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--val", type=int, default=40, help="CounterFact val cases scored at the end")
    add_output_args(p, "mend_edit_lr_semantics.json")
    args = p.parse_args()
    pin_threads(args.threads)
    meta = machine_meta()
    torch.manual_seed(0)
    hp = dict(model_name="smollm2-135m", rank=512, lr=1e-5, lr_lr=1e-4, c_loc=3.0, max_length=64)
    ref = MENDTraining(**hp, edit_lrs_lr="lr")
    own = copy.deepcopy(ref, memo={id(ref.model): ref.model})
    own.hparams.edit_lrs_lr = "lr_lr"
    train = load_edit_requests("counterfact", "train", limit=4 * args.steps)
    val = load_edit_requests("counterfact", "val", limit=args.val)
    rows = ref.token_rows(train, with_truth=False) + ref.token_rows(val, with_truth=True)
    ref.prefill_hidden_cache(rows, tag="counterfact_semantics")
    own.hidden_cache = ref.hidden_cache  # same base model, same rows
    arms = {"lr": ref, "lr_lr": own}
    opts = {k: m.configure_optimizers() for k, m in arms.items()}
    history: dict[str, list[dict]] = {k: [] for k in arms}
    for step in range(args.steps):
        batch = train[4 * step : 4 * step + 4]
        for k, m in arms.items():
            m.train()
            loss = m.edit_step(batch)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.hypernet.parameters(), 100.0)
            opts[k].step()
            opts[k].zero_grad()
            history[k].append({"step": step + 1, "loss": float(loss.detach()), "edit_lrs": m.hypernet.edit_lrs.detach().tolist()})
        if (step + 1) % 10 == 0:
            print(" ".join(f"{k}: loss {history[k][-1]['loss']:.4f} edit lr mean {statistics.fmean(history[k][-1]['edit_lrs']):.3e}" for k in arms), flush=True)
    final = {k: {"val": score(m, val), "edit_lrs": m.hypernet.edit_lrs.detach().tolist(),
                 "train_loss_last20": statistics.fmean(h["loss"] for h in history[k][-20:])} for k, m in arms.items()}  # fmt: skip
    for k, f in final.items():
        lrs = f["edit_lrs"]
        print(f"{k}: edit lrs {min(lrs):.3e}..{max(lrs):.3e}; train loss (last 20) {f['train_loss_last20']:.4f}; "
              + ", ".join(f"{n} {v:.3f}" for n, v in sorted(f["val"].items())))  # fmt: skip
    settings = {**vars(args), "out": portable(args.out), **hp, "edits_per_step": 4}
    write_result(args.out, {"machine": meta, "settings": settings, "final": final, "history": history})


if __name__ == "__main__":
    main()
