"""Measuring a model on a dataset: accuracy, loss, per-class accuracy, confusion, confident mistakes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .batches import iterate_batches, normalize_batch
from .data import ImageDataset
from .model import VisionTransformer


@dataclass
class EvalResult:
    """Accuracy of a model on a dataset."""

    step: int
    epoch: float
    acc: float  # top-1, 0-1
    loss: float  # cross-entropy without label smoothing
    per_class_acc: list[float]  # recall of each class
    confusion: list[list[int]]  # confusion[true][predicted], counts
    class_names: list[str]
    elapsed_s: float = 0.0  # training seconds when it was taken
    train_loss: float = float("nan")  # mean training loss since the previous evaluation

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@torch.no_grad()
def evaluate(
    model: VisionTransformer,
    dataset: ImageDataset,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int = 500,
    device: torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    return_predictions: bool = False,
) -> tuple[float, float, Tensor, Tensor | None, Tensor | None]:
    """Top-1 accuracy, mean loss, confusion matrix (K, K) [true, pred] and optionally
    predictions (N,) and their softmax confidences (N,)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    K = model.cfg.num_classes
    conf = torch.zeros(K, K, dtype=torch.long)
    loss_sum, preds, confs = 0.0, [], []
    for x, y in iterate_batches(dataset, batch_size):
        x = normalize_batch(x.to(device), mean, std)
        y = y.to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        p = logits.softmax(-1)
        c, pred = p.max(-1)
        conf += torch.bincount((y * K + pred).cpu(), minlength=K * K).view(K, K)
        if return_predictions:
            preds.append(pred.cpu())
            confs.append(c.cpu())
    model.train(was_training)
    n = max(1, len(dataset))
    acc = conf.diag().sum().item() / n
    if return_predictions:
        return acc, loss_sum / n, conf, torch.cat(preds), torch.cat(confs)
    return acc, loss_sum / n, conf, None, None


def eval_result(
    conf: Tensor, acc: float, loss: float, step: int, epoch: float, names: list[str], elapsed: float, train_loss: float
) -> EvalResult:
    """An `EvalResult` from `evaluate`'s confusion matrix (K, K), accuracy and loss, at a point of a run."""
    totals = conf.sum(1).clamp(min=1)
    return EvalResult(
        step=step,
        epoch=round(epoch, 4),
        acc=acc,
        loss=loss,
        per_class_acc=(conf.diag() / totals).tolist(),
        confusion=conf.tolist(),
        class_names=list(names),
        elapsed_s=round(elapsed, 2),
        train_loss=train_loss,
    )


def misclassified(
    model: VisionTransformer, dataset: ImageDataset, limit: int = 64, batch_size: int = 500
) -> list[dict[str, Any]]:
    """The most confidently wrong predictions, for a gallery.

    Returns:
        Up to `limit` dicts {index, true, pred, true_name, pred_name, confidence}, most
        confident first; `dataset.images[index]` is the (C, H, W) uint8 image.
    """
    cfg = model.cfg
    _, _, _, pred, conf = evaluate(model, dataset, cfg.mean, cfg.std, batch_size, return_predictions=True)
    assert pred is not None and conf is not None
    wrong = (pred != dataset.labels).nonzero().flatten()
    order = wrong[conf[wrong].argsort(descending=True)][:limit]
    names = dataset.class_names
    return [
        {
            "index": int(i),
            "true": int(dataset.labels[i]),
            "pred": int(pred[i]),
            "true_name": names[int(dataset.labels[i])],
            "pred_name": names[int(pred[i])],
            "confidence": float(conf[i]),
        }
        for i in order
    ]
