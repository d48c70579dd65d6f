"""Moved: evaluation is deep_rnn.evaluate (`deep-rnn evaluate`); this name only says so."""
import sys

if __name__ == "__main__":
    print("error: trainer.evaluate moved: run `python -m deep_rnn.evaluate` (or `deep-rnn evaluate`) with the "
          "same flags", file=sys.stderr)
    sys.exit(2)
