"""What `make run` ends with: what the pipeline produced and how to look at it."""

from __future__ import annotations

import json
from pathlib import Path

from overfit.config import project_root

# (path, what it is), in pipeline order; only those that exist are listed.
PRODUCTS = [
    ("data/raw/moons.csv", "the article's 100 two-moons points"),
    ("data/raw/fresh.csv", "a large fresh draw, to estimate real-world accuracy"),
    ("data/split", "train.csv (first 30 rows) and test.csv (the other 70)"),
    ("models", "one folder per configuration: a .keras model per seed, history, Hydra config"),
    ("reports/metrics.json", "the metrics DVC tracks: `dvc metrics show`"),
    ("reports/summary.md", "the comparison table and what it says"),
    ("reports/figures", "learning curves, accuracy vs strength, decision boundaries, weights"),
    ("mlflow.db", "the MLflow store: `make ui`, then http://127.0.0.1:5000"),
]


def describe(root: Path) -> str:
    lines = ["", "Produced:"]
    for name, what in PRODUCTS:
        if (root / name).exists():
            lines.append(f"  {name:<22} {what}")
    metrics = root / "reports/metrics.json"
    if metrics.is_file():
        report = json.loads(metrics.read_text(encoding="utf-8"))
        base, best = report.get("baseline", {}), report.get("best", {})
        if base and best:
            lines += [
                "",
                f"Unregularized: train {base['train_acc']:.3f}, test {base['test_acc']:.3f}; "
                f"best ({best['run']}): train {best['train_acc']:.3f}, "
                f"test {best['test_acc']:.3f}, fresh {best['fresh_acc']:.3f}",
            ]
    lines += [
        "",
        "Look at it:",
        "  dvc metrics show        the metrics;  dvc plots show  renders the DVC plots",
        "  make ui                 the MLflow UI on http://127.0.0.1:5000",
    ]
    return "\n".join(lines)


def main() -> None:
    print(describe(project_root()))


if __name__ == "__main__":
    main()
