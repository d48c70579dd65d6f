"""The top of the layout, the only code that knows every stage: the orchestrator of `make pipeline`, its
report, cross-stage evaluation and the `deep-rnn` command."""
