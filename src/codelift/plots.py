"""Figures as PNG bytes: training curves and the report's charts share one matplotlib set-up."""

from __future__ import annotations

import io


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    pyplot().close(fig)
    return buffer.getvalue()


def curves(history: list[dict], series: dict[str, str], title: str, ylabel: str = "loss",
           marks: dict[str, float] | None = None) -> bytes:
    """Each `series` key of a trainer's logged history against the optimizer step (evaluations as
    dots); `marks` adds labelled horizontal reference lines (e.g. held-out KL before and after)."""
    fig, ax = pyplot().subplots(figsize=(7, 4))
    for key, label in series.items():
        points = [(h["step"], h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points), label=label, marker="o" if key.startswith("eval") else None)
    for (label, value), style in zip((marks or {}).items(), ("--", ":", "-.")):
        ax.axhline(value, linestyle=style, color="gray", label=f"{label} ({value:.3f})")
    ax.set(xlabel="optimizer step", ylabel=ylabel, title=title)
    ax.legend()
    return png(fig)
