"""Metric histories in a real SQLite MLflow store: the bulk insert reads back as log_batch's."""

from __future__ import annotations

import math

import numpy as np
from mlflow.entities import Metric

from overfit import tracking


def history(client, run_id: str, name: str) -> list[tuple[int, float, int]]:
    points = client.get_metric_history(run_id, name)
    return sorted((m.step, -1.0 if math.isnan(m.value) else m.value, m.timestamp) for m in points)


def test_bulk_histories_read_back_as_log_batch(tmp_path):
    client = tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = tracking.experiment_id(client, "histories", (tmp_path / "artifacts").as_uri())
    assert tracking._database_store(client) is not None  # the bulk path is the one under test
    with_nan = np.linspace(0.5, 1.0, 1500)
    with_nan[7] = np.nan
    curves = {"train_loss": np.linspace(1.0, 0.1, 1500), "test_accuracy": with_nan}

    bulk = client.create_run(exp).info.run_id
    tracking.log_metric_histories(client, bulk, curves, start_ms=1000)
    reference = client.create_run(exp).info.run_id
    points = [
        Metric(name, float(v), 1000, step)
        for name, values in curves.items()
        for step, v in enumerate(values)
    ]
    for start in range(0, len(points), 1000):
        client.log_batch(reference, metrics=points[start : start + 1000])

    for name in curves:
        assert len(history(client, bulk, name)) == 1500
        assert history(client, bulk, name) == history(client, reference, name)
    # The latest values, which the runs table and search use, are the last epoch's.
    assert client.get_run(bulk).data.metrics == client.get_run(reference).data.metrics
    assert client.get_run(bulk).data.metrics["train_loss"] == 0.1
    found = client.search_runs([exp], "metrics.train_loss < 0.2")
    assert {r.info.run_id for r in found} == {bulk, reference}
