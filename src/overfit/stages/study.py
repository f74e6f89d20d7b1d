"""Stage study: how sure the sweep's findings are. Every configuration of params.yaml's sweep
again on `study.draws` draws of the data (draw k from data.random_state + k: its own training
and test rows, drawn as the article draws them; one seed per draw) at every size of
`study.n_train`, all measured on the one fresh sample, each against the unregularized run of
the same draw. Writes reports/study.json (the figures by draw, and each configuration's effect
with its interval across draws); the plot stage turns it into figures and the summary's verdict.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from overfit import layout, runtime
from overfit.artifacts import ArtifactError
from overfit.config import ConfigError, parse_params, project_root, read_params
from overfit.core.data import DataError, load_fresh
from overfit.core.remedies import remedy_of, run_name
from overfit.core.study import draw_seed, draw_state, size_study
from overfit.reports import Study, write_study
from overfit.runtime import run_stage
from overfit.sweep.plan import plan_sweep
from overfit.sweep.processes import LaunchFailed
from overfit.sweep.study_groups import launch_groups, train_draws_of


def study(root: Path) -> Study:
    """The study params.yaml asks for."""
    text = read_params(root)
    base = parse_params(text, root / layout.PARAMS)
    settings, data = base.study, base.data
    empty = Study(
        draws=settings.draws,
        baseline=None,
        seeds=[draw_seed(base.train.seeds, k) for k in range(settings.draws)],
        random_states=[draw_state(data.random_state, k) for k in range(settings.draws)],
        test_rows=data.n_samples - data.n_train,
        fresh_samples=data.fresh_samples,
        sizes=[],
    )
    if settings.draws == 0:
        return empty
    configs = plan_sweep(root, text, []).configs
    baselines = [run_name(c) for c in configs if remedy_of(c).kind == "none"]
    if not baselines:
        raise ConfigError(
            "study.draws: must be 0 when the sweep has no unregularized configuration (the "
            f"study measures every remedy against it), got {settings.draws}"
        )
    fresh = load_fresh(root, data)
    if base.launcher.name == "basic":  # every draw in this process, stacked
        by_size = train_draws_of(configs, base, range(settings.draws), fresh)
    else:
        by_size = launch_groups(root, text, configs, base)
    sizes = [size_study(n, by_size[n], baselines[0]) for n in settings.n_train]
    return empty.model_copy(update={"baseline": baselines[0], "sizes": sizes})


def main(argv: list[str] | None = None) -> None:
    if sys.argv[1:] if argv is None else argv:
        print(
            "usage: python -m overfit.stages.study (no arguments: it reads params.yaml)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    started = time.perf_counter()

    def work() -> Study:
        root = project_root()
        result = study(root)
        runtime.checkpoint()  # stopped before the study is written, or after it is whole
        # Built through the schema again: a study the reports could not read is not written.
        write_study(root, Study.model_validate(result.to_json()))
        return result

    # Ctrl-C and SIGTERM stop the training at its next safe point (launched groups are passed
    # the signal); reports/study.json is written whole or not at all.
    try:
        with runtime.signals_recorded():
            report = run_stage(work, (ArtifactError, DataError, LaunchFailed))
    except runtime.Interrupted as stop:
        done = "reports/study.json is complete" if stop.after_the_work else "no study written"
        print(f"error: {stop}; {done}", file=sys.stderr)
        raise SystemExit(stop.exit_status) from None
    seconds = time.perf_counter() - started
    if report.draws == 0:
        print(f"study off (study.draws 0): wrote {layout.STUDY}")
        return
    for size in report.sizes:
        effects = [c.fresh_effect for c in size.configs.values() if c.fresh_effect]
        better = sum(e.distinguishable and e.mean > 0 for e in effects)
        worse = sum(e.distinguishable and e.mean < 0 for e in effects)
        print(
            f"study, {size.n_train} training rows, {report.draws} draws: on fresh points "
            f"{better} configurations beat {report.baseline}, {worse} do worse, "
            f"{len(effects) - better - worse} cannot be told from it"
        )
    models = report.draws * len(report.sizes) * len(report.sizes[0].configs)
    print(f"trained {models} models (and their folds) in {seconds:.1f} s; wrote {layout.STUDY}")


if __name__ == "__main__":
    main()
