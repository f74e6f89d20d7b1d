"""MLflow through its public client, one concern a module: `store` (the tracking URI, local
SQLite or a server whose password never reaches a log; whether it answers; the store and its
experiment, created whole when needed), `runs` (parent and child runs and their status on exit,
orphaned and killed runs, params, metrics and sampled metric histories, a sweep's runs found
again), `lineage` (where a run came from: its process, the commit, dvc.lock's data md5, the
data files as datasets), `model_format` (a model in MLflow's Keras flavor, a saved model folder
logged as a run's model), `registry` (registered models, versions, aliases, descriptions), and
`classifier` (the registered model's code, which MLflow runs rather than any module imports)."""
