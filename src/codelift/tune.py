"""`codelift tune`: the iterative method. Train, score on the validation split, decide, repeat.

Round 1 trains the config as given. Every later round starts from the best round's settings and
changes one setting of the declared search space (`tune.space`) to a value not tried yet, in the
order the space lists them. The search stops when the score reaches the target, when `patience`
rounds in a row brought no improvement, at `max_rounds`, or when no untried change is left.
Rounds share the folders of the stages they have in common (a new learning rate retrains SFT,
not the teacher), and each round is appended to tune.jsonl when it ends, so a killed search
re-run with the same command resumes in the round it was in.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from codelift.config import RunConfig, with_settings
from codelift.errors import CodeliftError
from codelift.evaluate.run import evaluate_model
from codelift.io import append_rows, read_appended, write_json
from codelift.pipeline import RunContext, Stages, check_run, eval_config, train_models


def run_tuning(cfg: RunConfig, out: Path, *, data_dir: Path | None = None, console: Console | None = None) -> dict:
    """Search until a stop rule fires; returns (and writes to tune.json) the rounds and the verdict."""
    console = console or Console()
    check_tuning(cfg, data_dir)
    search = search_fingerprint(cfg)
    rounds = read_appended(out / "tune.jsonl")
    if rounds and rounds[0]["search"] != search:
        raise CodeliftError(f"{out} holds a search over another config or search space; use another --out or "
                            f"remove {out / 'tune.jsonl'}.")
    while (reason := stop_reason(cfg, rounds)) is None:
        settings = next_settings(cfg, rounds)
        if settings is None:
            reason = "search space exhausted: every single change from the best settings was tried"
            break
        console.rule(f"tuning round {len(rounds) + 1}: {settings or 'the config as given'}")
        rounds.append(train_and_score(cfg, settings, out, len(rounds) + 1, rounds, search, data_dir, console))
        append_rows(out / "tune.jsonl", [rounds[-1]])
        console.print(f"round {len(rounds)}: {cfg.tune.metric} {rounds[-1]['score']:.3f} ({rounds[-1]['decision']})")
    best = best_round(rounds)
    result = {"stop_reason": reason, "metric": cfg.tune.metric, "best_round": best["round"],
              "best_score": best["score"], "best_settings": best["settings"], "rounds": rounds}
    write_json(out / "tune.json", result)
    return result


def check_tuning(cfg: RunConfig, data_dir: Path | None) -> None:
    """Validation split only, and every value of the search space makes a valid run."""
    source, _, split = cfg.data.validation.partition(":")
    if source == "humaneval" or split == "test":
        raise CodeliftError(f"data.validation: '{cfg.data.validation}' is a test split; tuning scores on a "
                            f"validation split only (e.g. mbpp:validation), so the test stays unseen.")
    if "," in split:
        raise CodeliftError(f"data.validation: '{cfg.data.validation}': tuning scores one split; name one.")
    if not cfg.tune.space:
        raise CodeliftError("tune.space: empty; declare at least one setting and the values to try.")
    check_run(cfg, data_dir)
    for key, values in cfg.tune.space.items():
        if not values:
            raise CodeliftError(f"tune.space.{key}: no values to try.")
        for value in values:
            check_run(with_settings(cfg, {key: value}), data_dir)


def search_fingerprint(cfg: RunConfig) -> str:
    """What a resumed search must share with the one that started: the config apart from the stop rules."""
    fixed = cfg.model_dump(mode="json")
    fixed["tune"] = {"metric": cfg.tune.metric, "limit": cfg.tune.limit, "space": cfg.tune.space}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:16]


def stop_reason(cfg: RunConfig, rounds: list[dict]) -> str | None:
    if not rounds:
        return None
    best = best_round(rounds)["score"]
    if cfg.tune.target is not None and best >= cfg.tune.target:
        return f"target met: {cfg.tune.metric} {best:.3f} >= {cfg.tune.target}"
    stale = next((i for i, r in enumerate(reversed(rounds)) if r["improved"]), len(rounds))
    if stale >= cfg.tune.patience:
        return f"no improvement in the last {stale} rounds (patience {cfg.tune.patience})"
    if len(rounds) >= cfg.tune.max_rounds:
        return f"max rounds reached ({cfg.tune.max_rounds})"
    return None


def best_round(rounds: list[dict]) -> dict:
    """The earliest round with the highest score (a later tie is no improvement)."""
    return max(rounds, key=lambda r: (r["score"], -r["round"]))


def next_settings(cfg: RunConfig, rounds: list[dict]) -> dict[str, Any] | None:
    """{} first; then the best settings with one setting changed to a value that makes a run not
    tried yet (compared by the values the settings take, so 3e-4 for LoRA is its default rate)."""
    if not rounds:
        return {}
    best = best_round(rounds)["settings"]
    tried = {effective(cfg, r["settings"]) for r in rounds}
    for key, values in cfg.tune.space.items():
        for value in values:
            candidate = {**best, key: value}
            if effective(cfg, candidate) not in tried:
                return candidate
    return None


def effective(cfg: RunConfig, settings: dict) -> str:
    """The values every setting of the search space takes with `settings` applied."""
    changed = with_settings(cfg, settings)
    return json.dumps({key: setting_value(changed, key) for key in cfg.tune.space}, sort_keys=True, default=str)


def setting_value(cfg: RunConfig, key: str) -> Any:
    """The value a dotted setting takes in `cfg`; SFT settings as their method's preset resolves them."""
    node: Any = cfg
    for part in key.split("."):
        node = node.resolved() if hasattr(node, "resolved") else node
        node = getattr(node, part, None) if not isinstance(node, dict) else node.get(part)
    return node


def train_and_score(cfg: RunConfig, settings: dict, out: Path, number: int, rounds: list[dict], search: str,
                    data_dir: Path | None, console: Console) -> dict:
    """One round: train with the settings (sharing finished stages), score the final student on the
    validation split, and decide."""
    began = time.monotonic()
    round_cfg = with_settings(cfg, settings)
    stages = Stages(out / "stages", RunContext(data_dir, round_cfg.report_to, console), keyed=True)
    final = train_models(round_cfg, stages).plan
    scoring = eval_config(round_cfg.eval, final.outputs["model"], round_cfg.data.validation,
                          limit=round_cfg.tune.limit or round_cfg.eval.limit, codebleu=round_cfg.tune.metric == "codebleu")
    summary = evaluate_model(scoring, out / f"round-{number:02d}", data_dir=data_dir)
    score = summary[round_cfg.tune.metric]
    best = best_round(rounds) if rounds else None
    improved = best is None or score > best["score"]
    decision = ("first round: the config as given" if best is None else
                f"better than round {best['round']} ({best['score']:.3f}): the next rounds start from these settings"
                if improved else f"no better than round {best['round']} ({best['score']:.3f}): keep its settings")
    return {"round": number, "settings": settings, "score": score, "metric": round_cfg.tune.metric,
            "improved": improved, "decision": decision, "model": final.outputs["model"],
            "validation": f"{round_cfg.data.validation} ({summary['tasks']} problems)",
            "wall_seconds": round(time.monotonic() - began, 1), "search": search}
