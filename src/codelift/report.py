"""`codelift report`: one page a person reads to understand a run, from the run folder alone.

The recipe: read the run's config and each stage's run.json and metrics.jsonl, and the ablation
-> draw the plots (score bars with intervals, loss and KD curves, the solved grid) as PNG files
-> write report.md (linking them) and report.html (with them embedded, so it travels alone).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from codelift.errors import CodeliftError
from codelift.io import atomic_path, read_jsonl, write_bytes
from codelift.plots import curves, png, pyplot

STAGE_ORDER = ("data", "teacher", "student", "sft", "distill", "plan", "index", "eval")
TRAINING_STAGES = ("teacher", "sft", "distill", "plan")
COLUMNS = ("variant", "pass@1 [CI]", "vs", "EM", "EM@k", "syntax valid", "tests passed", "CodeBLEU", "KL to teacher",
           "parameters", "stage time", "stage peak memory")


def write_report(run_dir: Path) -> Path:
    """Write `run_dir`/report.md, report.html and report/*.png; return the HTML's path."""
    run_dir = Path(run_dir)
    ablation_path = run_dir / "eval" / "ablation.json"
    if not ablation_path.is_file():
        raise CodeliftError(f"{run_dir}: no eval/ablation.json; expected a folder written by `codelift run` that "
                            f"finished its evaluation stage.")
    ablation = json.loads(ablation_path.read_text())
    manifest = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    stages = read_stages(run_dir)
    figures = {"scores": score_bars(ablation), "grid": solved_grid(ablation)}
    for name, folder in stages.items():
        history = [row for _, row in read_jsonl(folder / "metrics.jsonl")] if (folder / "metrics.jsonl").is_file() else []
        if name in TRAINING_STAGES and any("loss" in row or "eval_loss" in row for row in history):
            figures[f"{name}-loss"] = curves(history, {"loss": "train", "eval_loss": "validation"},
                                             f"{name}: training and validation loss")
        if any("kd_loss" in row for row in history):
            figures[f"{name}-kd"] = curves(history, {key: key for key in ("kd_loss", "ce_loss", "eval_kd_loss")},
                                           f"{name}: distillation loss terms")
        if (folder / "kl.png").is_file():  # the distill stage's held-out KL before and after
            figures[f"{name}-kl"] = (folder / "kl.png").read_bytes()
    images = run_dir / "report"
    for name, image in figures.items():
        write_bytes(images / f"{name}.png", image)
    sections = report_sections(run_dir, ablation, manifest, stages, figures)
    with atomic_path(run_dir / "report.md") as tmp:
        tmp.write_text(markdown(sections, run_dir))
    with atomic_path(run_dir / "report.html") as tmp:
        tmp.write_text(html_page(sections, figures, run_dir))
    return run_dir / "report.html"


def read_stages(run_dir: Path) -> dict[str, Path]:
    """Finished stage folders (their run.json has the pipeline's record), in recipe order."""
    found = {}
    for path in run_dir.glob("*/run.json"):
        record = json.loads(path.read_text()).get("pipeline")
        if record:
            found[record["stage"]] = path.parent
    return {name: found[name] for name in STAGE_ORDER if name in found}


# --- Sections: (title, text, table, figure names), rendered by both writers ------------------------

def report_sections(run_dir: Path, ablation: dict, manifest: dict, stages: dict[str, Path],
                    figures: dict) -> list[dict]:
    confidence = round(100 * ablation["confidence"])
    sections = [{"title": "What this run found", "text": findings(ablation)}]
    for benchmark, rows in ablation_tables(ablation):
        sections.append({"title": f"Ablation on {benchmark} ({rows[0]['problems']} problems)",
                         "text": f"pass@1 with its {confidence}% bootstrap interval over problems "
                                 f"({ablation['bootstrap_samples']:,} resamples). 'vs': problems the variant "
                                 f"newly solves (+) and breaks (-) against the row it adds one change to, with the "
                                 f"exact sign-test (McNemar) p-value. Plan and +select rows sample several programs "
                                 f"per problem and keep one chosen on the visible tests only: their score is "
                                 f"filtered pass@1 at the budget shown, not plain pass@1. Stage time and memory "
                                 f"are those of the stage that made the variant.",
                         "table": [ablation_cells(row) for row in rows]})
    sections.append({"title": "Scores per benchmark", "text": f"Bars: pass@1; whiskers: {confidence}% interval.",
                     "figures": ["scores"]})
    curves = [name for name in figures if name.endswith(("-loss", "-kd", "-kl"))]
    if curves:
        sections.append({"title": "Training curves", "text": "Loss on response tokens per optimizer step "
                         "(validation loss as dots); for distillation, the KD and cross-entropy terms and the "
                         "held-out KL(teacher || student) before and after.",
                         "figures": curves})
    sections.append({"title": "Which problems each variant solves", "text": "Green: solved (all samples pass); "
                     "yellow: some samples pass; grey: none.", "figures": ["grid"]})
    sections.append({"title": "Stages", "text": f"Artifacts under {run_dir}.", "table": stage_rows(stages)})
    sections.append({"title": "Configuration and versions", "text": provenance(manifest),
                     "code": yaml.safe_dump(manifest.get("config", {}), sort_keys=False)})
    return sections


def ablation_tables(ablation: dict) -> list[tuple[str, list[dict]]]:
    """(title, rows) of each benchmark's table, then of all benchmarks pooled where there are several."""
    tables = list(ablation["benchmarks"].items())
    if ablation.get("pooled"):
        tables.append((" + ".join(ablation["benchmarks"]) + " pooled", ablation["pooled"]))
    return tables


def findings(ablation: dict) -> str:
    """A few sentences: best variant per benchmark, and each change that the sign test supports."""
    lines = []
    for benchmark, rows in ablation_tables(ablation):
        students = [r for r in rows if r["variant"] != "teacher"] or rows
        best = max(students, key=lambda r: r["pass@1"])
        if best["pass@1"] == 0:
            lines.append(f"On {benchmark}, no student variant solves any of the {best['problems']} problems.")
        else:
            lines.append(f"On {benchmark}, the best student variant is {best['variant']} with pass@1 "
                         f"{best['pass@1']:.3f} ({best['ci_low']:.3f}-{best['ci_high']:.3f}).")
        for row in rows[1:]:
            verdict = "a significant" if row["p_value"] < 0.05 else "not a significant"
            lines.append(f"{row['variant']} vs {row['vs']}: +{len(row['newly_solved'])} / -{len(row['broken'])} "
                         f"problems, p = {row['p_value']:.3g} ({verdict} change at 5%).")
    return " ".join(lines)


def ablation_cells(row: dict) -> list[str]:
    vs = (f"{row['vs']}: +{len(row['newly_solved'])} / -{len(row['broken'])} (p={row['p_value']:.3g})"
          if "vs" in row else "")
    score = f"{row['pass@1']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    if row.get("sample_budget"):
        score += f" filtered, {row['sample_budget']}"
    if row.get("by_difficulty"):  # APPS: the same score per level
        score += " (" + ", ".join(f"{level} {value:.3f}" for level, value in row["by_difficulty"].items()) + ")"
    em_at_k = row.get("em_at_k")
    return [row["variant"], score, vs, number(row.get("exact_match")),
            f"{em_at_k[1]:.3f} (k={em_at_k[0]})" if em_at_k else "-", number(row["syntax_valid"]), number(row["avg_tests_passed"]), number(row["codebleu"]),
            number(row["kl_to_teacher"]), f"{row['parameters'] / 1e6:.1f}M" if row["parameters"] else "-",
            f"{row['stage']} {row['stage_wall_seconds']:.0f} s" if row["stage_wall_seconds"] is not None else "-",
            memory(row["stage_peak_memory_mb"], row.get("stage_peak_gpu_memory_mb"))]


def memory(rss_mb: float | None, gpu_mb: float | None) -> str:
    """Peak host memory, and the GPU's beside it where the stage ran on one."""
    if rss_mb is None:
        return "-"
    return f"{rss_mb:,.0f} MiB" + (f" (GPU {gpu_mb:,.0f} MiB)" if gpu_mb is not None else "")


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def stage_rows(stages: dict[str, Path]) -> list[list[str]]:
    rows = [["stage", "wall time", "peak memory", "outputs"]]
    for name, folder in stages.items():
        record = json.loads((folder / "run.json").read_text())["pipeline"]
        outputs = ", ".join(f"{k}: {v}" for k, v in record["outputs"].items())
        rows.append([name, f"{record['cost']['wall_seconds']:.0f} s", memory(record["cost"]["peak_memory_mb"], record["cost"].get("peak_gpu_memory_mb")),
                     outputs])
    return rows


def stage_times(run_dir: Path) -> str:
    """One line: each finished stage's wall time as recorded when it ran, and their sum."""
    seconds = {name: json.loads((folder / "run.json").read_text())["pipeline"]["cost"]["wall_seconds"]
               for name, folder in read_stages(Path(run_dir)).items()}
    return ", ".join(f"{name} {duration(s)}" for name, s in seconds.items()) + f"; total {duration(sum(seconds.values()))}"


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def provenance(manifest: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items())
    return (f"git revision {manifest.get('git_revision') or 'unknown'}; Python {manifest.get('python', '?')}; "
            f"{versions or 'versions not recorded'}.")


# --- Writers ------------------------------------------------------------------------------------------

def markdown(sections: list[dict], run_dir: Path) -> str:
    return "\n".join([f"# codelift run report: {run_dir.name}", "", markdown_sections(sections)])


def markdown_sections(sections: list[dict]) -> str:
    out = []
    for section in sections:
        out += [f"## {section['title']}", ""] + ([section["text"], ""] if section["text"] else [])
        if section.get("table"):
            header, *body = section["table"] if section["title"] == "Stages" else [list(COLUMNS), *section["table"]]
            out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
            out.append("")
        out += [f"![{name}](report/{name}.png)" for name in section.get("figures", [])]
        if section.get("code"):
            out += ["```yaml", section["code"].rstrip(), "```"]
        out.append("")
    return "\n".join(out)


def html_page(sections: list[dict], figures: dict[str, bytes], run_dir: Path) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>codelift report: {html.escape(run_dir.name)}"
             "</title><style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.3em .6em;"
             "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
             "pre{background:#f6f6f6;padding:1em;overflow:auto}</style></head><body>",
             f"<h1>codelift run report: {html.escape(run_dir.name)}</h1>"]
    for section in sections:
        parts.append(f"<h2>{html.escape(section['title'])}</h2><p>{html.escape(section['text'])}</p>")
        if section.get("table"):
            header, *body = section["table"] if section["title"] == "Stages" else [list(COLUMNS), *section["table"]]
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in body]
            parts.append("</table>")
        for name in section.get("figures", []):
            data = base64.b64encode(figures[name]).decode()
            parts.append(f"<p><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'></p>")
        if section.get("code"):
            parts.append(f"<pre>{html.escape(section['code'])}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def print_ablation(ablation: dict, console: Console) -> None:
    """The ablation tables and what they show: rich tables on a terminal; into a file or a pipe,
    where rich would squeeze every cell into 80 columns, the same tables as Markdown."""
    if not console.is_terminal:
        sections = [{"title": f"{benchmark} ({rows[0]['problems']} problems)", "text": "",
                     "table": [ablation_cells(row) for row in rows]} for benchmark, rows in ablation_tables(ablation)]
        console.out(markdown_sections(sections), highlight=False)
        console.out(findings(ablation), highlight=False)
        return
    for benchmark, rows in ablation_tables(ablation):
        table = Table(title=f"{benchmark} ({rows[0]['problems']} problems)")
        for column in COLUMNS:
            table.add_column(column, justify="left" if column == "variant" else "right")
        for row in rows:
            table.add_row(*ablation_cells(row))
        console.print(table)
    console.print(findings(ablation), highlight=False)


# --- Plots ---------------------------------------------------------------------------------------------

def score_bars(ablation: dict) -> bytes:
    plt = pyplot()
    benchmarks = ablation["benchmarks"]
    fig, axes = plt.subplots(1, len(benchmarks), figsize=(max(6, 1.3 * len(next(iter(benchmarks.values())))) *
                                                          len(benchmarks), 4), squeeze=False)
    for ax, (benchmark, rows) in zip(axes[0], benchmarks.items()):
        values = [r["pass@1"] for r in rows]
        errors = [[v - r["ci_low"] for v, r in zip(values, rows)], [r["ci_high"] - v for v, r in zip(values, rows)]]
        colors = ["#888" if r["variant"] == "teacher" else "#3a78b5" for r in rows]
        ax.bar([r["variant"] for r in rows], values, yerr=errors, capsize=4, color=colors)
        ax.set(title=benchmark, ylabel="pass@1", ylim=(0, 1))
        ax.tick_params(axis="x", rotation=30)
    return png(fig)


def sweep_plot(rows: list[dict], title: str) -> bytes:
    """Each score against the number of prompt examples (the PEFT study's ICL/RAG figure)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    counts = [row["examples"] for row in rows]
    for metric in (key for key in rows[0] if key != "examples"):
        if all(row[metric] is not None for row in rows):
            ax.plot(counts, [row[metric] for row in rows], marker="o", label=metric)
    ax.set(title=title, xlabel="examples in the prompt", ylabel="score", ylim=(0, 1), xticks=counts)
    ax.legend()
    return png(fig)


def solved_grid(ablation: dict) -> bytes:
    import numpy as np
    from matplotlib.colors import ListedColormap

    plt = pyplot()
    benchmarks = ablation["benchmarks"]
    fig, axes = plt.subplots(len(benchmarks), 1, squeeze=False, figsize=(
        min(18, 3 + 0.12 * max(len(rows[0]["scores"]) for rows in benchmarks.values())),
        1.2 + 0.45 * sum(len(rows) + 2 for rows in benchmarks.values())))
    for ax, (benchmark, rows) in zip(axes[:, 0], benchmarks.items()):
        problems = list(rows[0]["scores"])
        grid = np.array([[2 if r["scores"].get(p, 0) == 1 else 1 if r["scores"].get(p, 0) > 0 else 0 for p in problems]
                         for r in rows])
        ax.imshow(grid, cmap=ListedColormap(["#d9d9d9", "#f2c14e", "#3c9d5d"]), vmin=0, vmax=2, aspect="auto",
                  interpolation="nearest")
        ax.set_yticks(range(len(rows)), [r["variant"] for r in rows])
        step = max(1, len(problems) // 40)
        ax.set_xticks(range(0, len(problems), step), [p.split("/")[-1] for p in problems[::step]], rotation=90,
                      fontsize=7)
        ax.set_title(f"{benchmark}: solved problems", fontsize=10)
    return png(fig)
