"""`python -m deep_rnn COMMAND ...`: the same as the `deep-rnn` command."""
from deep_rnn.cli import main

main()
