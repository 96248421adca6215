"""Trials as records: what the oracle knows about each trial, as rows for metadata.json, the
trials table (trials.csv, and the one printed at the end), and the choice of the trial to train.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from tfpipeline.tuning.oracles import FAMILY

CSV_COLUMNS = ["trial_id", "status", "family", "score", "epochs", "epochs_trained", "epochs_scheduled", "seconds",
               "val_loss", "continues"]


def _metric(trial, name: str):
    return trial.metrics.get_last_value(name) if trial.metrics.exists(name) else None


def trial_records(oracle, families: tuple[str, ...], auto: bool) -> list[dict]:
    """Every trial the oracle knows: id, status, family, hyperparameters, score, epochs, seconds.

    Args:
        oracle: the search's KerasTuner oracle.
        families: the families searched; with one, every trial is of that family.
        auto: `--model auto`: the family is a hyperparameter and the others are scoped by it.
    """
    records = []
    for trial_id in sorted(oracle.trials):
        trial = oracle.trials[trial_id]
        values = dict(trial.hyperparameters.values)
        family = values.pop(FAMILY, None) if auto else families[0]
        searched = {}
        for name, value in values.items():
            if name.startswith("tuner/"):
                continue
            searched[name.split("/", 1)[1] if auto and "/" in name else name] = value
        epochs = _metric(trial, "best_epoch")
        records.append({
            "trial_id": trial.trial_id,
            "status": trial.status,
            "family": family,
            "score": trial.score,
            "epochs": int(epochs) if epochs is not None else None,  # where the score was reached
            "epochs_trained": int(_metric(trial, "epochs") or 0) or None,
            # Hyperband: the epochs its round was given, which its learning-rate schedule spans
            # (early stopping may end it sooner); other tuners give every trial max_epochs.
            "epochs_scheduled": values.get("tuner/epochs"),
            "seconds": _metric(trial, "seconds"),
            "val_loss": _metric(trial, "val_loss"),
            "continues": values.get("tuner/trial_id"),  # Hyperband: the trial this round continued
            "hyperparameters": searched,
        })
    return records


def write_csv(records: list[dict], path: Path) -> None:
    """The trials table: one row per trial, one column per hyperparameter any trial has."""
    names = sorted({name for r in records for name in r["hyperparameters"]})
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS + names)
        for r in records:
            writer.writerow([r[c] for c in CSV_COLUMNS] + [r["hyperparameters"].get(n, "") for n in names])
    tmp.replace(path)


def table(records: list[dict], best_id: str | None) -> str:
    """The trials as the text table the search prints when it ends, the chosen one marked."""
    lines = [f"  {'trial':<6} {'family':<12} {'status':<10} {'val acc':>8} {'epochs':>6} {'seconds':>8}"]
    for r in records:
        score = f"{r['score']:.4f}" if r["score"] is not None else "-"
        seconds = f"{r['seconds']:.0f}" if r["seconds"] is not None else "-"
        mark = "  <- chosen" if r["trial_id"] == best_id else ""
        lines.append(f"  {r['trial_id']:<6} {r['family'] or '-':<12} {r['status']:<10} {score:>8} "
                     f"{r['epochs'] or '-':>6} {seconds:>8}{mark}")
    return "\n".join(lines)


def choose(records: list[dict], num_validation: int) -> tuple[dict, str]:
    """The trial to train, and why: the best validation accuracy, unless a family's defaults
    scored within one standard error of it (the one-standard-error rule).

    Trials are scored on a few thousand validation images, so scores a standard error apart
    (sqrt(p(1-p)/n)) are a tie, and a trial that wins one by a few images is as likely to be
    worse as better on new data. The defaults are each family's chosen settings
    (tfpipeline/models), so a tie goes to them. Each family's first trial is its defaults (the
    oracle proposes them first); a Hyperband trial that continues it has the same
    hyperparameters.

    Args:
        records: `trial_records`; at least one of them COMPLETED.
        num_validation: the number of validation examples the trials were scored on.

    Returns:
        (the chosen trial's record, the reason for the choice as a phrase).
    """
    completed = [r for r in records if r["status"] == "COMPLETED"]
    best = max(completed, key=lambda r: r["score"])  # the first of equal scores: the earliest trial
    error = math.sqrt(best["score"] * (1 - best["score"]) / max(1, num_validation))
    defaults: dict[str, dict] = {}
    for record in sorted(records, key=lambda r: r["trial_id"]):
        defaults.setdefault(record["family"], record["hyperparameters"])
    tied = [r for r in completed if r["hyperparameters"] == defaults[r["family"]]
            and r["score"] >= best["score"] - error]
    if not tied or best in tied:
        return best, "the best validation accuracy"
    pick = max(tied, key=lambda r: r["score"])
    return pick, (f"the {pick['family']} defaults: validation accuracy {pick['score']:.4f}, within one standard "
                  f"error ({error:.4f}) of the best, trial {best['trial_id']}'s {best['score']:.4f}")
