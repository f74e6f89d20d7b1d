"""The tables people read: the sweep's table (train stage, MLflow) and reports/summary.md."""

from __future__ import annotations

from collections.abc import Sequence

from overfit.artifacts import JobResult
from overfit.core.remedies import FAMILIES, TEST_WATCH_LABEL, watched_test
from overfit.core.selection import TIE, candidates, describe, rank
from overfit.core.uncertainty import ALPHA
from overfit.reports import (
    Comparison,
    ConfigStudy,
    ConfigSummary,
    Effect,
    Evaluation,
    SelectionStudy,
    SizeStudy,
    Study,
)


def results_table(results: Sequence[JobResult]) -> str:
    """Markdown table of the sweep as training measured it, best mean cross-validation accuracy
    first (test accuracy without cross-validation)."""
    with_cv = all(r.cv for r in results)
    lines = [
        "| run | train acc |" + (" cv acc |" if with_cv else "") + " test acc | gap |",
        "|---|---|" + ("---|" if with_cv else "") + "---|---|",
    ]
    key = (lambda r: -r.cv["mean"]["cv_acc"]) if with_cv else (lambda r: -r.mean["test_acc"])
    for r in sorted(results, key=lambda r: (key(r), r.run)):
        m, s = r.mean, r.std
        cv = f" {r.cv['mean']['cv_acc']:.3f} ± {r.cv['std']['cv_acc']:.3f} |" if with_cv else ""
        lines.append(
            f"| {r.run} | {m['train_acc']:.3f} ± {s['train_acc']:.3f} |{cv} "
            f"{m['test_acc']:.3f} ± {s['test_acc']:.3f} | {m['gap']:+.3f} |"
        )
    return "\n".join(lines)


def progress_line(result: JobResult, seconds: float) -> str:
    """One finished job, as the sweep prints it (`seconds`: the job's time in its process)."""
    mean, std = result.mean, result.std
    cv = f"cv {result.cv['mean']['cv_acc']:.3f}   " if result.cv else ""
    return (
        f"  {result.run:<14} train {mean['train_acc']:.3f} +- {std['train_acc']:.3f}   {cv}"
        f"test {mean['test_acc']:.3f} +- {std['test_acc']:.3f}   {seconds:5.1f} s"
    )


def summary_markdown(
    evaluation: Evaluation,
    folds: int,
    study: Study | None = None,
    n_train: int = 0,
    selection: SelectionStudy | None = None,
) -> str:
    """The overfitting in numbers, both selection rules side by side, the verdict across draws
    of the data (`study`, at `n_train` training rows; `selection`, the rule repeated on every
    draw, where it could be), and every configuration."""
    configs = evaluation.configs
    has_cv = all("cv_acc" in c.measures for c in configs.values())

    def cell(name: str, key: str) -> str:
        spread = configs[name].measures[key]
        interval = f" [{spread.low:.3f}, {spread.high:.3f}]" if spread.low is not None else ""
        return f"{spread.mean:.3f} ± {spread.std:.3f}{interval}"

    text = ["# Sweep summary", ""]
    if evaluation.baseline_run is not None:
        b = {k: configs[evaluation.baseline_run].mean(k) for k in ("train_acc", "test_acc")}
        b |= {k: configs[evaluation.baseline_run].mean(k) for k in ("fresh_acc", "gap")}
        base = configs[evaluation.baseline_run]
        text += [
            f"Without a penalty the network overfits: train accuracy {b['train_acc']:.3f}, "
            f"test {figure(base, 'test_acc')} (a gap of {b['gap']:.3f}), "
            f"and {figure(base, 'fresh_acc')} on fresh points. Intervals are 95%: over the "
            "points measured on (Wilson; cross-validation: its held-out rows, every training row "
            "once).",
            "",
        ]
    text += choice_section(evaluation, folds, has_cv)
    text += study_section(study, n_train, evaluation, selection)
    text += remedies_section(evaluation, has_cv)
    text += noise_section(evaluation)
    if has_cv:  # in the order of the rule (cv_acc when the rule is test_acc)
        order = rank(candidates(configs), evaluation.rule.replace("test_acc", "cv_acc"))
    else:
        order = sorted(configs, key=lambda n: (-configs[n].mean("test_acc"), n))
    columns = ["train acc", *(["cv acc"] if has_cv else []), "test acc", "fresh acc", "gap"]
    lines = [
        "| configuration | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for name in order:
        measures = ["train_acc", *(["cv_acc"] if has_cv else []), "test_acc", "fresh_acc", "gap"]
        marks = {evaluation.selected: " (selected)", evaluation.test_choice: " (best on test)"}
        if evaluation.selected == evaluation.test_choice:
            marks = {evaluation.selected: " (selected)"}
        mark = marks.get(name, "") + (OPTIMISTIC_MARK if watched_test(name) else "")
        lines.append(f"| {name}{mark} | " + " | ".join(cell(name, m) for m in measures) + " |")
    first = "best by cross-validation" if has_cv else "highest test accuracy"
    text += [
        "## Every configuration",
        "",
        f"Mean ± spread (standard deviation) over seeds (cv: over folds), then the 95% "
        f"interval; {first} first; gap = train - test.",
        "",
    ]
    return "\n".join(text + lines) + "\n"


OPTIMISTIC_MARK = f" ({TEST_WATCH_LABEL})"


def figure(config: ConfigSummary, measure: str) -> str:
    """A mean with its 95% interval: `0.914 (0.825-0.960)`."""
    spread = config.measures[measure]
    if spread.low is None:
        return f"{spread.mean:.3f}"
    return f"{spread.mean:.3f} ({spread.low:.3f}-{spread.high:.3f})"


def noise_section(evaluation: Evaluation) -> list[str]:
    """Which configurations differ from no remedy by more than noise, on the test rows and on
    the fresh points, from the paired tests evaluate ran."""
    compared = evaluation.versus_baseline
    if not compared:
        return []
    base = evaluation.configs[evaluation.baseline_run or ""]
    sizes = {"test": "the test rows", "fresh": "the fresh points"}
    text = [
        "## Which differences are more than noise",
        "",
        f"Each configuration against no remedy ({evaluation.baseline_run}) on the same points: "
        "an exact McNemar test on the points exactly one of the two gets right (each by its "
        f"seeds' mean probability), its p-value adjusted over the {len(compared)} "
        f"configurations (Benjamini-Hochberg). A difference is told from noise when the "
        f"adjusted p is below {ALPHA}.",
        "",
    ]
    for split, where in sizes.items():
        better, worse, same = [], [], []
        for name, comparison in compared.items():
            paired = getattr(comparison, split)
            group = same if not paired.distinguishable else better
            if paired.distinguishable and paired.lost > paired.gained:
                group = worse
            group.append(name)
        points = f"On {where} ({base.measures[f'{split}_acc'].mean:.3f} without a remedy): "
        if not better and not worse:
            widest = max(compared, key=lambda n: sum(_counts(compared[n], split)))
            gained, lost = _counts(compared[widest], split)
            text.append(
                f"- {points}none of the {len(compared)} configurations differs from no remedy "
                f"by more than noise; the widest disagreement, {widest}, is {gained} points "
                f"gained and {lost} lost."
            )
            continue
        parts = [
            f"{len(group) or 'none'} {word}" + (f" ({', '.join(group)})" if group else "")
            for group, word in (
                (better, "do better"),
                (worse, "do worse"),
                (same, "cannot be told from it"),
            )
        ]
        text.append(f"- {points}" + "; ".join(parts) + ".")
    text.append(
        "- These tests compare trained models on fixed points. Whether a remedy helps on "
        "another draw of the training rows is another question, which one draw cannot answer."
    )
    table = [
        "",
        "| configuration | test: gained / lost | adjusted p | fresh: gained / lost | adjusted p |",
        "|---|---|---|---|---|",
    ]
    for name, c in compared.items():
        table.append(
            f"| {name} | {c.test.gained} / {c.test.lost} | {_p(c.test.p_adjusted)} | "
            f"{c.fresh.gained} / {c.fresh.lost} | {_p(c.fresh.p_adjusted)} |"
        )
    return text + table + [""]


def _counts(comparison: Comparison, split: str) -> tuple[int, int]:
    paired = getattr(comparison, split)
    return paired.gained, paired.lost


def _p(value: float) -> str:
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def family_picks(evaluation: Evaluation, has_cv: bool) -> dict[str, str]:
    """Each remedy's best configuration, by the selection rule restricted to its family
    (cross-validation; the test accuracy without it)."""
    configs = evaluation.configs
    picks = {}
    for family in FAMILIES:
        mine = {n: c for n, c in configs.items() if c.kind == family}
        if not mine:
            continue
        if has_cv:
            rule = evaluation.rule.replace("test_acc", "cv_acc")
            picks[family] = rank(candidates(mine), rule)[0]
        else:
            picks[family] = max(sorted(mine), key=lambda n: mine[n].mean("test_acc"))
    return picks


def remedies_section(evaluation: Evaluation, has_cv: bool) -> list[str]:
    """The article's question: which remedy closes the gap best, each at its best setting."""
    configs = evaluation.configs
    picks = family_picks(evaluation, has_cv)
    if not picks:
        return []
    measures = [*(["cv_acc"] if has_cv else []), "test_acc", "fresh_acc", "gap"]
    heads = [m.replace("_acc", " acc") for m in measures]
    table = ["| remedy | its best | " + " | ".join(heads) + " |", "|---" * (len(heads) + 2) + "|"]
    rows = dict(picks)
    if evaluation.baseline_run is not None:
        rows = {"none": evaluation.baseline_run} | rows
    for family, name in rows.items():
        label = FAMILIES[family].label if family in FAMILIES else "no remedy"
        figures = " | ".join(
            figure(configs[name], m) if m != "gap" else f"{configs[name].mean(m):.3f}"
            for m in measures
        )
        mark = OPTIMISTIC_MARK if watched_test(name) else ""
        table.append(f"| {label} | {name}{mark} | {figures} |")
    best = []
    for measure, word in (
        ("cv_acc", "cross-validation"),
        ("test_acc", "test"),
        ("fresh_acc", "fresh points"),
    ):
        if measure not in measures:
            continue
        value = max(configs[picks[f]].mean(measure) for f in picks)
        tied = [FAMILIES[f].label for f in picks if configs[picks[f]].mean(measure) >= value - TIE]
        top = configs[next(picks[f] for f in picks if FAMILIES[f].label == tied[0])]
        low = top.measures[measure].low
        near = [
            FAMILIES[f].label
            for f in picks
            if low is not None
            and FAMILIES[f].label not in tied
            and configs[picks[f]].mean(measure) >= low
        ]
        if len(tied) == 1:
            best.append(f"on {word}, {tied[0]} ({value:.3f})")
        else:
            best.append(f"on {word}, {len(tied)} remedies tie at {value:.3f} ({', '.join(tied)})")
        if near:
            best[-1] += f", with {len(near)} more inside its 95% interval ({', '.join(near)})"
    smallest = min(picks, key=lambda f: configs[picks[f]].mean("gap"))
    verdict = (
        f"Best remedy {'; '.join(best)}. The smallest train - test gap: "
        f"{FAMILIES[smallest].label} ({configs[picks[smallest]].mean('gap'):.3f})."
    )
    compared = evaluation.versus_baseline
    better = [
        f
        for f in picks
        if picks[f] in compared
        and compared[picks[f]].test.distinguishable
        and compared[picks[f]].test.gained > compared[picks[f]].test.lost
    ]
    if compared and not better:
        verdict += (
            " On the test rows, no remedy's best does better than no remedy by more than noise "
            "(next section): these are rankings of a few points, not findings."
        )
    return [
        "## Which remedy closes the gap best",
        "",
        "Each remedy at its best setting (chosen as the configuration is: "
        + ("by cross-validation" if has_cv else "by test accuracy")
        + "); gap = train - test.",
        "",
        *table,
        "",
        verdict,
        "",
    ]


def choice_section(evaluation: Evaluation, folds: int, has_cv: bool) -> list[str]:
    """Which configuration each rule picks, what each reports, and what it is really worth."""
    configs = evaluation.configs
    chosen, on_test = evaluation.selected, evaluation.test_choice
    rule = describe(evaluation.rule, folds, evaluation.one_se)
    c = configs[chosen]
    text = [
        "## The choice",
        "",
        f"Selected: **{chosen}**, by {rule}. Its test accuracy is {figure(c, 'test_acc')} and "
        f"its accuracy on the fresh sample is {figure(c, 'fresh_acc')}.",
        "",
    ]
    if not has_cv:
        return text + [
            "Without cross-validation (select.folds 0) there is no honest choice to set beside "
            "it: its test accuracy was used to choose it, so it overstates; the fresh sample "
            "says what it is worth.",
            "",
        ]
    honest = "cv_acc" if evaluation.rule == "test_acc" else evaluation.rule
    honest_pick = evaluation.cv_choice or chosen
    rows = [(describe(honest, folds, evaluation.one_se), honest_pick)]
    if evaluation.one_se:  # beside it, what the best score alone picks
        rows.append((describe(honest, folds), rank(candidates(configs), honest)[0]))
    rows.append((describe("test_acc", folds), on_test))
    table = [
        "| rule | picks | cv acc | test acc | fresh acc | test - fresh |",
        "|---|---|---|---|---|---|",
    ]
    for label, name in rows:
        n = configs[name]
        table.append(
            f"| {label} | {name} | {figure(n, 'cv_acc')} | {figure(n, 'test_acc')} | "
            f"{figure(n, 'fresh_acc')} | {n.mean('test_acc') - n.mean('fresh_acc'):+.3f} |"
        )
    h, t = configs[honest_pick], configs[on_test]
    if honest_pick == on_test:
        verdict = (
            f"Both rules pick {on_test}: on this data, choosing on the test set happens to cost "
            "nothing, but its test accuracy is still not an independent estimate."
        )
    else:
        verdict = (
            f"Choosing on the test set picks {on_test} and reports test "
            f"{t.mean('test_acc'):.3f}, {t.mean('test_acc') - h.mean('test_acc'):+.3f} above the "
            f"cross-validation choice; on fresh points it reaches {t.mean('fresh_acc'):.3f}, "
            f"{t.mean('fresh_acc') - h.mean('fresh_acc'):+.3f} against "
            f"{h.mean('fresh_acc'):.3f} for {honest_pick}."
        )
    top = max(n.mean("cv_acc") for n in configs.values())
    tied = [name for name, n in configs.items() if n.mean("cv_acc") >= top - TIE]
    if len(tied) > 1:
        verdict += (
            f" {len(tied)} of {len(configs)} configurations tie at the top cross-validation "
            f"accuracy ({top:.3f}): a few held-out rows separate few configurations, so the "
            "held-out loss decides among them."
        )
    return text + table + ["", verdict, ""]


def _signed(effect: Effect) -> str:
    """`+0.013 (-0.007 to +0.032)`: a mean effect with its 95% interval."""
    return f"{effect.mean:+.3f} ({effect.low:+.3f} to {effect.high:+.3f})"


def study_verdict(size: SizeStudy, draws: int) -> str:
    """The study's answer in words: which remedies raise or lower fresh accuracy by more than
    noise across draws, and the rest, indistinguishable from no remedy."""
    effects = {n: c.fresh_effect for n, c in size.configs.items() if c.fresh_effect}
    ranked = sorted(effects, key=lambda n: -effects[n].mean)
    better = [n for n in ranked if effects[n].distinguishable and effects[n].mean > 0]
    worse = [n for n in ranked if effects[n].distinguishable and effects[n].mean < 0]
    same = len(effects) - len(better) - len(worse)

    def listed(names: list[str]) -> str:
        return "; ".join(
            f"{n} by {_signed(effects[n])}, on {round(effects[n].helped * draws)} of {draws} draws"
            for n in names
        )

    text = f"On {draws} draws of the data ({size.n_train} training rows), "
    if better:
        text += (
            f"{len(better)} remedies raise fresh accuracy by more than noise: {listed(better)}. "
        )
    else:
        top = ranked[0]
        text += (
            "no remedy raises fresh accuracy by more than noise: the largest mean effect is "
            f"{top}'s, {_signed(effects[top])}, better on "
            f"{round(effects[top].helped * draws)} of {draws} draws. "
        )
    if worse:
        text += f"{len(worse)} lower it: {', '.join(worse)}. "
    text += f"The other {same} are indistinguishable from no remedy."
    return text


def study_section(
    study: Study | None, n_train: int, evaluation: Evaluation, selection: SelectionStudy | None
) -> list[str]:
    """The sweep across draws: the verdict, the selected configuration's effect, the selection
    repeated on every draw, every configuration's effects, and the learning curve."""
    if study is None or not study.sizes or study.baseline is None:
        return []
    size = study.size(n_train) or study.sizes[0]
    draws, baseline = study.draws, study.baseline
    text = [
        f"## Across {draws} draws of the data",
        "",
        f"The sweep again on {draws} draws of the data, the first being this one: each its own "
        f"{size.n_train} training and {study.test_rows} test rows, drawn as the article draws "
        f"them, and its own seed; every configuration against {baseline} on the same draw, on "
        f"the same {study.fresh_samples:,} fresh points. Effects are means over draws with their "
        "95% t interval; an effect is more than noise when the t test's p, adjusted over the "
        f"configurations (Benjamini-Hochberg), is below {ALPHA}.",
        "",
        study_verdict(size, draws),
        "",
    ]
    selected = evaluation.selected
    chosen = size.configs.get(selected)
    if chosen is not None and chosen.fresh_effect and chosen.gap_effect:
        text += [
            f"The selected configuration, {selected}: fresh accuracy "
            f"{_signed(chosen.fresh_effect)} against {baseline}, train - test gap "
            f"{_signed(chosen.gap_effect)}.",
            "",
        ]
    if selection is not None:
        s = selection
        picks = ", ".join(f"{p} {s.picks.count(p)}x" for p in sorted(set(s.picks)))
        score = "test" if evaluation.rule == "test_acc" else "cross-validation"
        text += [
            f"The selection repeated on every draw (it picked {picks}): its pick's fresh "
            f"accuracy is {_signed(s.versus_baseline)} against {baseline} and "
            f"{_signed(s.versus_hindsight)} against the best configuration in hindsight; its "
            f"{score} score overstates its fresh accuracy by {_signed(s.overstatement)} (the "
            "winner's curse).",
            "",
        ]
    text += [
        "| configuration | fresh acc | effect on fresh acc | effect on gap | draws helped |",
        "|---|---|---|---|---|",
    ]
    for name in sorted(size.configs, key=lambda n: -_mean(size.configs[n].fresh_acc)):
        c = size.configs[name]
        fresh, gap = c.fresh_effect, c.gap_effect
        if fresh is None or gap is None:
            text.append(f"| {name} | {_mean(c.fresh_acc):.3f} | 0 | 0 | - |")
            continue
        mark = " *" if fresh.distinguishable else ""
        text.append(
            f"| {name} | {_mean(c.fresh_acc):.3f} | {_signed(fresh)}{mark} | {_signed(gap)} | "
            f"{round(fresh.helped * draws)} of {draws} |"
        )
    text += ["", "(*: more than noise on fresh points)", ""]
    if len(study.sizes) > 1:
        text += learning_table(study)
    return text


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def learning_table(study: Study) -> list[str]:
    """More data as a remedy: fresh accuracy and gap by training rows, no remedy against the
    best configuration of each size (in hindsight)."""
    lines = [
        "### More data as a remedy",
        "",
        "| training rows | no remedy: fresh acc | gap | best remedy (in hindsight) | fresh acc | "
        "gap |",
        "|---|---|---|---|---|---|",
    ]
    for size in study.sizes:
        none = size.configs[study.baseline or ""]
        best = max(size.configs, key=lambda n: _mean(size.configs[n].fresh_acc))
        c = size.configs[best]

        def gap(config: ConfigStudy) -> float:
            return _mean(config.train_acc) - _mean(config.test_acc)

        lines.append(
            f"| {size.n_train} | {_mean(none.fresh_acc):.3f} | {gap(none):.3f} | {best} | "
            f"{_mean(c.fresh_acc):.3f} | {gap(c):.3f} |"
        )
    return [*lines, ""]
