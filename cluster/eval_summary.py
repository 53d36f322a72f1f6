"""`vigorl eval`'s figures: per-sample lines (items.jsonl) -> summary.json's overall and per-subgroup accuracy
with Wilson intervals, format rate, reward, zooms, pass@k; and those figures as MLflow metrics. Pure."""

from __future__ import annotations

import math
from collections import Counter, defaultdict


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion p observed over n trials (Wilson 1927); (0, 0) for n = 0.
    Unlike the normal interval it stays inside [0, 1] and is not degenerate at p = 0 or 1."""
    if n == 0:
        return 0.0, 0.0
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return round(max(0.0, c - h), 4), round(min(1.0, c + h), 4)



def _stats(lines: list[dict], k: int) -> dict:
    n_samples = len(lines)
    acc = sum(x["correct"] for x in lines) / max(1, n_samples)
    by_item: dict[str, bool] = defaultdict(bool)
    for x in lines:
        by_item[x["item_id"]] |= x["correct"]
    out = {"n": len(by_item), "samples": n_samples, "accuracy": round(acc, 4),
           "accuracy_ci95": wilson(acc, n_samples),
           "format_rate": round(sum(x["reward"]["format"] > 0 for x in lines) / max(1, n_samples), 4),
           "reward": round(sum(x["reward"]["overall"] for x in lines) / max(1, n_samples), 4),
           "zooms": round(sum(len(x["tool_calls"]) for x in lines) / max(1, n_samples), 4),
           "unparsed": sum(1 for x in lines if x["answer"] is None)}
    if k > 1:
        p = sum(by_item.values()) / max(1, len(by_item))
        out |= {f"pass@{k}": round(p, 4), f"pass@{k}_ci95": wilson(p, len(by_item))}
    return out


def summarize(lines: list[dict], k: int, skipped: Counter) -> dict:
    """Overall and per-subgroup figures. The interval is Wilson's over the samples scored (with k = 1, the
    items); `unparsed` counts samples whose answer could not be read (scored 0)."""
    groups: dict[str, list] = defaultdict(list)
    for x in lines:
        groups[x["subgroup"]].append(x)
    return {"overall": _stats(lines, k), "subgroups": {g: _stats(v, k) for g, v in sorted(groups.items())},
            "skipped": dict(skipped), "ci": "Wilson score interval, 95 %"}


def metrics(summary: dict) -> dict[str, float]:
    """summary.json's figures as MLflow metrics: eval/<figure>, eval/<subgroup>/<figure>, eval/skipped,
    faults/actor_restarts."""
    out = {}
    for scope, stats in [("eval", summary["overall"])] + [
            (f"eval/{''.join(c if c.isalnum() or c in '_-./' else '_' for c in g)}", s)
            for g, s in summary["subgroups"].items()]:
        out |= {f"{scope}/{k}": float(v) for k, v in stats.items() if isinstance(v, (int, float))}
    out["eval/skipped"] = float(sum(summary["skipped"].values()))
    out["faults/actor_restarts"] = float(summary["actor_restarts"])
    return out
