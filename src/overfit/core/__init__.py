"""The experiment itself, pure: the data, the model and its remedies, the stacked trainer,
selection, the measures, and the tables and figures made of them. No MLflow, no DVC."""
