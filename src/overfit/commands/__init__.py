"""The operator's commands, run by hand or by CI, never by a DVC stage (`python -m
overfit.commands.<name>`): the gate, promotion, serving, the tracking server, params."""
