"""What `make run` ends with: what the pipeline produced and how to look at it."""

from __future__ import annotations

from pathlib import Path

from overfit import layout
from overfit.artifacts import ArtifactError
from overfit.config import load_params, project_root
from overfit.core.selection import OPTIMISTIC
from overfit.reports import read_evaluation, read_study

# (path, what it is), in pipeline order; only those that exist are listed.
PRODUCTS = [
    (layout.POINTS_CSV, "the data set's 100 points (data.name: moons or circles)"),
    (layout.FRESH_CSV, "a large fresh draw, to estimate real-world accuracy"),
    (layout.SPLIT_DIR, "train.csv (first 30 rows) and test.csv (the other 70)"),
    (layout.MODELS_DIR, "one folder per configuration: a .keras model per seed, history, config"),
    (layout.SWEEP_RECORD, "what the sweep trained: each configuration's result digest"),
    (layout.STUDY, "the sweep on other draws of the data: each remedy's effect, interval"),
    (layout.METRICS, "the headline figures DVC tracks: `dvc metrics show`"),
    (layout.CONFIGS, "every configuration's measures (mean and spread), the selection"),
    (layout.SUMMARY, "the choice, both rules, each remedy's best, every configuration"),
    (layout.FIGURES_DIR, "learning curves, accuracy vs remedies, boundaries, weights, study"),
    (layout.MODEL_RECORD, "the registered model (alias candidate) and its digest: `make promote`"),
    (Path(layout.MLFLOW_DB), "the MLflow store: `make ui`, then the link it prints"),
]


def describe(root: Path) -> str:
    lines = ["", "Produced:"]
    for path, what in PRODUCTS:
        if (root / path).exists():
            lines.append(f"  {path.as_posix():<22} {what}")
    try:
        report = read_evaluation(root)
    except ArtifactError:
        report = None
    if report is not None and report.baseline_run is not None:
        base, chosen = report.configs[report.baseline_run], report.configs[report.selected]
        cv = f"cv {chosen.mean('cv_acc'):.3f}, " if "cv_acc" in chosen.measures else ""
        how = f", {OPTIMISTIC}" if report.rule == "test_acc" else ""
        lines += [
            "",
            f"Unregularized: train {base.mean('train_acc'):.3f}, test {base.mean('test_acc'):.3f}; "
            f"selected ({report.selected}{how}): {cv}"
            f"test {chosen.mean('test_acc'):.3f}, fresh {chosen.mean('fresh_acc'):.3f}",
        ]
        lines += study_line(root, report.selected)
    lines += [
        "",
        "Look at it (first put .venv's dvc and python on your PATH):",
        "  source .venv/bin/activate",
        "  dvc metrics show        the headline figures;  dvc plots show  renders the DVC plots",
        "  make ui                 the MLflow UI on port 5000: open the link it prints",
        "  make promote            the candidate becomes champion if the gate's rules hold;"
        "  make serve  serves it",
    ]
    return "\n".join(lines)


def study_line(root: Path, selected: str) -> list[str]:
    """The selected configuration's effect across the study's draws, if there is one."""
    try:
        study = read_study(root)
    except ArtifactError:
        return []
    size = study.size(load_params(root).data.n_train)
    config = size.configs.get(selected) if size else None
    if config is None or config.fresh_effect is None:
        return []
    e = config.fresh_effect
    noise = "more than noise" if e.distinguishable else "not told from noise"
    return [
        f"Across {study.draws} draws of the data, {selected} against {study.baseline} on fresh "
        f"points: {e.mean:+.3f} ({e.low:+.3f} to {e.high:+.3f}), {noise}"
    ]


def main() -> None:
    print(describe(project_root()))


if __name__ == "__main__":
    main()
