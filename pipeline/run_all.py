"""Moved: the orchestrator is deep_rnn.run_all (`deep-rnn pipeline`); this name only says so."""
import sys

if __name__ == "__main__":
    print("error: pipeline.run_all moved: run `python -m deep_rnn.run_all` (or `deep-rnn pipeline`) with the "
          "same flags", file=sys.stderr)
    sys.exit(2)
