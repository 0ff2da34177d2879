"""Classification metrics from a confusion matrix, with scikit-learn's definitions.

`confusion[i, j]` counts examples of true class i predicted as j. Conventions (sklearn's):

- accuracy: trace / total.
- balanced accuracy: mean recall over classes that occur in the true labels
  (`balanced_accuracy_score`).
- F1 macro / weighted: per class F1 = 2 tp / (2 tp + fp + fn), averaged over the classes that
  occur in the true *or* predicted labels (sklearn's default label set), unweighted or weighted
  by support (`f1_score(average=...)`, zero_division=0).
- per-class report: precision, recall, F1, support for every class (0 where undefined).

`confusion_matrix_jax` builds the matrix inside a jitted step, so a whole epoch's metrics cost
one [C, C] device-to-host copy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix_jax(
    labels: jax.Array, predictions: jax.Array, num_classes: int, valid: jax.Array | None = None
) -> jax.Array:
    """[B] true, [B] predicted -> int32 [C, C] counts (rows true, columns predicted)."""
    true = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)
    if valid is not None:
        true = true * valid.astype(jnp.int32)[:, None]
    pred = jax.nn.one_hot(predictions, num_classes, dtype=jnp.int32)
    return true.T @ pred


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(out, (np.asarray(labels), np.asarray(predictions)), 1)
    return out


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def per_class(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """precision, recall, f1 [C] float64 (0 where undefined) and support [C] int."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    return {
        "precision": _safe_divide(tp, predicted),
        "recall": _safe_divide(tp, support),
        "f1": _safe_divide(2 * tp, support + predicted),
        "support": support.astype(np.int64),
    }


def summary(confusion: np.ndarray) -> dict[str, float]:
    """accuracy, balanced_accuracy, f1_macro, f1_weighted of a [C, C] confusion matrix."""
    confusion = np.asarray(confusion, np.float64)
    total = confusion.sum()
    if total == 0:
        raise ValueError("metrics.summary: empty confusion matrix (no examples).")
    stats = per_class(confusion)
    support = confusion.sum(axis=1)
    in_true = support > 0
    in_either = in_true | (confusion.sum(axis=0) > 0)
    return {
        "accuracy": float(np.trace(confusion) / total),
        "balanced_accuracy": float(np.mean(stats["recall"][in_true])),
        "f1_macro": float(np.mean(stats["f1"][in_either])),
        "f1_weighted": float(np.sum(stats["f1"] * support) / support.sum()),
    }


def epoch_record(prefix: str, confusion: np.ndarray, loss: float) -> dict[str, float]:
    """{"<prefix>_loss", "<prefix>_accuracy", ...} of one epoch, as the loop logs them."""
    return {
        f"{prefix}_loss": loss,
        **{f"{prefix}_{k}": v for k, v in summary(confusion).items()},
    }


def classification_report(confusion: np.ndarray, class_names: list[str]) -> str:
    """A text table like sklearn's `classification_report` (every class listed)."""
    stats = per_class(confusion)
    overall = summary(confusion)
    width = max(len(n) for n in class_names) + 2
    lines = [f"{'':<{width}}{'precision':>10}{'recall':>10}{'f1-score':>10}{'support':>10}", ""]
    for c, name in enumerate(class_names):
        lines.append(
            f"{name:<{width}}{stats['precision'][c]:>10.4f}{stats['recall'][c]:>10.4f}"
            f"{stats['f1'][c]:>10.4f}{stats['support'][c]:>10d}"
        )
    total = int(stats["support"].sum())
    lines += [
        "",
        f"{'accuracy':<{width}}{'':>20}{overall['accuracy']:>10.4f}{total:>10d}",
        f"{'balanced accuracy':<{width}}{'':>20}{overall['balanced_accuracy']:>10.4f}{total:>10d}",
        f"{'macro avg F1':<{width}}{'':>20}{overall['f1_macro']:>10.4f}{total:>10d}",
        f"{'weighted avg F1':<{width}}{'':>20}{overall['f1_weighted']:>10.4f}{total:>10d}",
    ]
    return "\n".join(lines) + "\n"
