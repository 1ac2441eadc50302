"""The one training loop: AdamW, linear warm-up then linear decay, gradient clipping, shuffled
epochs from a seeded numpy generator. The demo builder and every training run use it.

Its whole state (weights, optimizer moments, scheduler, the data order, every RNG) round-trips
through safetensors + JSON (:meth:`Trainer.checkpoint` / :meth:`Trainer.restore`), never pickle,
so a resumed run continues bit for bit where it stopped.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..data import Split

MAX_LENGTH = 64


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def accuracy(model, tok, data: Split, batch_size: int = 64, device="cpu") -> float:
    """Share of ``data`` the model classifies right (leaves the model in train mode)."""
    model.eval()
    correct = 0
    with torch.inference_mode():
        for lo in range(0, len(data), batch_size):
            batch = tok(data.texts[lo:lo + batch_size], padding=True, truncation=True,
                        max_length=MAX_LENGTH, return_tensors="pt").to(device)
            pred = model(**batch).logits.argmax(-1).cpu()
            correct += int((pred == torch.tensor(data.labels[lo:lo + batch_size])).sum())
    model.train()
    return correct / max(1, len(data))


def freeze_embeddings(model) -> int:
    """Stops gradients to the input embeddings (word, position, type); returns how many tensors."""
    count = 0
    for name, param in model.named_parameters():
        if ".embeddings." in f".{name}" and "LayerNorm" not in name:
            param.requires_grad_(False)
            count += 1
    return count


def load_weights(model, state: Dict[str, torch.Tensor]) -> None:
    """Copies ``state`` into the model's tensors in place (keys it lacks keep their values)."""
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key in state:
                value.copy_(state[key].to(value.device, value.dtype))


class Trainer:
    """Steps one classifier on one labelled split. Build the model first (after seeding), then the
    trainer: the optimizer, scheduler and batch order are created here in a fixed order."""

    def __init__(self, model, tok, train: Split, steps: int, batch_size: int, lr: float, seed: int,
                 warmup: Optional[int] = None, weight_decay: float = 0.01, device="cpu"):
        self.model, self.tok, self.train, self.device = model, tok, train, device
        self.batch_size, self.lr, self.total = batch_size, lr, steps
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        warm = max(1, steps // 10) if warmup is None else max(1, warmup)
        self.warm = warm
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
        self.rng = np.random.default_rng(seed)
        self.order: List[int] = []
        self.losses: List[float] = []
        self.step_count = 0

    def step(self, schedule: bool = True) -> float:
        """One optimizer step on the next batch; returns its loss."""
        if len(self.order) < self.batch_size:
            self.order.extend(self.rng.permutation(len(self.train)).tolist())
        idx, self.order = self.order[:self.batch_size], self.order[self.batch_size:]
        batch = self.tok([self.train.texts[i] for i in idx], padding=True, truncation=True,
                         max_length=MAX_LENGTH, return_tensors="pt").to(self.device)
        labels = torch.tensor([self.train.labels[i] for i in idx], device=self.device)
        out = self.model(**batch, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        if schedule:
            self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        loss = float(out.loss.detach())
        self.losses.append(loss)
        self.step_count += 1
        return loss

    def recent_loss(self, n: int = 10) -> float:
        return float(np.mean(self.losses[-n:])) if self.losses else float("nan")

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    def accuracy(self, data: Split) -> float:
        return accuracy(self.model, self.tok, data, device=self.device)

    def weights(self) -> Dict[str, torch.Tensor]:
        """A CPU copy of the model's weights (the merge and checkpoint input)."""
        return {k: v.detach().to("cpu").clone().contiguous() for k, v in self.model.state_dict().items()}

    def load_weights(self, state: Dict[str, torch.Tensor]) -> None:
        load_weights(self.model, state)

    # ---- checkpoints: safetensors + JSON -------------------------------------------------------
    def state(self) -> Tuple[Dict[str, torch.Tensor], dict]:
        """(tensors, JSON) that :meth:`restore` turns back into this exact trainer state."""
        tensors = {f"model.{k}": v for k, v in self.weights().items()}
        opt = self.opt.state_dict()
        for idx, slots in opt["state"].items():
            for name, value in slots.items():
                tensors[f"optimizer.{idx}.{name}"] = value.detach().to("cpu").clone().contiguous()
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        sched = {k: v for k, v in self.sched.state_dict().items() if k != "lr_lambdas"}
        record = {"step_count": self.step_count, "order": self.order, "losses": self.losses,
                  "numpy_rng": self.rng.bit_generator.state,
                  "param_groups": opt["param_groups"], "scheduler": sched}
        return tensors, json.loads(json.dumps(record, default=list))

    def restore(self, tensors: Dict[str, torch.Tensor], record: dict) -> None:
        self.load_weights({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        slots: Dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, idx, name = key.split(".", 2)
                slots.setdefault(int(idx), {})[name] = value
        groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in record["param_groups"]]
        self.opt.load_state_dict({"state": slots, "param_groups": groups})
        self.sched.load_state_dict({**record["scheduler"], "lr_lambdas": [None] * len(self.opt.param_groups)})
        self.rng.bit_generator.state = record["numpy_rng"]
        self.order = list(record["order"])
        self.losses = list(record["losses"])
        self.step_count = int(record["step_count"])
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])

    def save(self, folder: Path, extra: Optional[dict] = None, prefix: str = "trainer") -> None:
        """Writes ``<prefix>.safetensors`` + ``<prefix>.json`` into ``folder`` (made whole first)."""
        folder.mkdir(parents=True, exist_ok=True)
        tensors, record = self.state()
        save_file(tensors, str(folder / f"{prefix}.safetensors"))
        (folder / f"{prefix}.json").write_text(json.dumps({**record, "extra": extra or {}}))

    def load(self, folder: Path, prefix: str = "trainer") -> dict:
        """Restores from :meth:`save`'s files; returns the ``extra`` saved with them."""
        record = json.loads((folder / f"{prefix}.json").read_text())
        self.restore(load_file(str(folder / f"{prefix}.safetensors")), record)
        return record.get("extra") or {}
