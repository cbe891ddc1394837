"""Training plots (matplotlib, Agg backend): accuracy and loss curves as in the notebook, and a
confusion matrix."""

from __future__ import annotations

import io

from matplotlib.figure import Figure

from maskbatch import files
from maskbatch.outputs.writers import write_bytes_atomic


def _figure_bytes(fig: object) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def curve_png(histories: list[dict[str, list[float]]], metric: str, title: str,
              names: list[str] | None = None) -> bytes:
    """Train (green) vs tune (blue) curve of one metric, the notebook's plot (the tune part drives
    early stopping; val plays no part); an ensemble's members are drawn one over another, one line
    style each, labelled with `names`."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    styles = ("-", "--", ":", "-.")
    for i, history in enumerate(histories):
        epochs = range(1, len(history.get(metric, [])) + 1)
        who = f" ({names[i]})" if names and len(histories) > 1 else ""
        style = styles[i % len(styles)]
        ax.plot(epochs, history.get(metric, []), "g" + style, label=f"Train{who}")
        ax.plot(epochs, history.get(f"val_{metric}", []), "b" + style, label=f"Tune{who}")
    if len(histories) > 1:
        title += f" ({len(histories)} members)"
    ax.set_title(title)
    ax.set_xlabel("Epoch")
    ax.set_ylabel(metric.capitalize())
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return _figure_bytes(fig)


def confusion_png(matrix: list[list[int]], class_names: list[str], title: str) -> bytes:
    """A labelled confusion matrix (rows: true class, columns: predicted class)."""
    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    _draw_matrix(ax, matrix, class_names)
    ax.set_ylabel("True")
    ax.set_title(title)
    return _figure_bytes(fig)


def _draw_matrix(ax: object, matrix: list[list[int]], labels: list[str]) -> None:
    """Counts of a confusion matrix on `ax`, shaded, labelled by class (x: predicted)."""
    ax.imshow(matrix, cmap="Blues")
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center",
                    color="white" if value > peak / 2 else "black", fontsize=12)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("Predicted")


def confusion_sets_png(matrices: dict[str, list[list[int]]], accuracy: dict[str, float],
                       class_names: list[str], threshold: float) -> bytes:
    """One confusion matrix per validation set, side by side (rows true, columns predicted)."""
    n = max(len(matrices), 1)
    fig = Figure(figsize=(4.6 * n, 4))
    axes = fig.subplots(1, n, squeeze=False)
    short = [c.replace("face_", "") for c in class_names]
    for ax, (name, matrix) in zip(axes[0], matrices.items()):
        _draw_matrix(ax, matrix, short)
        if ax is axes[0][0]:
            ax.set_ylabel("True")
        ax.set_title(f"{name} val: accuracy {accuracy.get(name, 0):.3f}")
    fig.suptitle(f"Validation per set, threshold {threshold:g}")
    fig.tight_layout()
    return _figure_bytes(fig)


def write_plots(out_dir: str, histories: list[dict[str, list[float]]], matrix: list[list[int]],
                class_names: list[str], threshold: float = 0.5,
                names: list[str] | None = None) -> list[str]:
    """accuracy.png, loss.png and confusion_matrix.png in `out_dir` (curves of every member of
    `histories`, labelled with `names`); returns their names."""

    pngs = {
        "accuracy.png": curve_png(histories, "accuracy", "Training vs Tune Accuracy", names),
        "loss.png": curve_png(histories, "loss", "Training vs Tune Loss", names),
        "confusion_matrix.png": confusion_png(matrix, class_names,
                                              f"Validation, threshold {threshold:g}"),
    }
    for name, data in pngs.items():
        write_bytes_atomic(files.join(out_dir, name), data)
    return list(pngs)
