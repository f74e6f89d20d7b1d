"""The DVC stages' entry points, one module per stage (`python -m overfit.stages.<name>`):
thin shells that read params.yaml, call the core and write their outputs."""
