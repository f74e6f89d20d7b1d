"""MLflow through its public client, on a real SQLite store: sampled metric histories, URIs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from overfit import tracking


def test_sampled_epochs_keep_the_first_and_the_last() -> None:
    assert tracking.sampled_epochs(60, 20) == [1, 20, 40, 60]
    assert tracking.sampled_epochs(65, 20) == [1, 20, 40, 60, 65]
    assert tracking.sampled_epochs(4000, 20)[:3] == [1, 20, 40]
    assert len(tracking.sampled_epochs(4000, 20)) == 201
    assert tracking.sampled_epochs(5, 1) == [1, 2, 3, 4, 5]
    assert tracking.sampled_epochs(1, 20) == [1]


def test_histories_read_back_sampled_with_the_last_epoch_latest(tmp_path) -> None:
    client = tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = tracking.experiment_id(client, "histories", (tmp_path / "artifacts").as_uri())
    with_nan = np.linspace(0.5, 1.0, 1500)
    with_nan[99] = np.nan  # epoch 100, a sampled one
    curves = {"train_loss": np.linspace(1.0, 0.1, 1500), "test_accuracy": with_nan}

    run = client.create_run(exp).info.run_id
    tracking.log_metric_histories(client, run, curves, every=50, start_ms=1000)

    epochs = tracking.sampled_epochs(1500, 50)
    for name, values in curves.items():
        points = sorted(client.get_metric_history(run, name), key=lambda m: m.step)
        assert [m.step for m in points] == epochs
        for point in points:
            expected = values[point.step - 1]
            if math.isnan(expected):
                assert math.isnan(point.value)
            else:
                assert point.value == pytest.approx(expected, rel=1e-12)
    # The latest values, which the runs table and search use, are the last epoch's.
    assert client.get_run(run).data.metrics == {"train_loss": 0.1, "test_accuracy": 1.0}
    found = client.search_runs([exp], "metrics.train_loss < 0.2")
    assert [r.info.run_id for r in found] == [run]


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://user:secret@127.0.0.1:5001", "http://127.0.0.1:5001"),
        ("HTTPS://user:secret@example.org/mlflow", "https://example.org/mlflow"),
        ("http://127.0.0.1:5001/?token=secret", "http://127.0.0.1:5001/"),
        ("http://127.0.0.1:5001/#secret", "http://127.0.0.1:5001/"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ],
)
def test_redact_drops_every_place_a_secret_can_hide(uri: str, shown: str) -> None:
    assert tracking.redact(uri) == shown


def test_an_upper_case_scheme_is_still_checked(tmp_path) -> None:
    with pytest.raises(ConnectionError) as caught:
        tracking.check_reachable("HTTP://user:secret@127.0.0.1:1/?token=secret", timeout=1)
    assert "secret" not in str(caught.value)
    assert "http://127.0.0.1:1" in str(caught.value)
