"""overfit: a reproducible pipeline that shows, measures and guards against overfitting."""
