"""The book's deep GRU, as *Dive into Deep Learning* (d2l 1.0.3, PyTorch) runs it in "Deep Recurrent Neural
Networks": 2 × 32 GRU, d2l split, batch 1024, 32 steps, SGD lr 2, clip 1, 100 epochs, then the sample.

Runs under the book's own environment (.venv-book, `make book-venv`), not the project's, from a directory whose
../data/timemachine.txt is the corpus (d2l's loader checks its SHA-1 and skips the download). bench.train_vs_d2l
times this whole process against `python -m trainer.train`. The last stdout line is JSON: the board's last train
and validation perplexity (d2l's own figures: means of per-batch perplexity), the sample and fit seconds.

    python deep_gru.py [--epochs 100] [--plot]
--plot keeps d2l's live ProgressBoard, which in a script redraws a growing figure three times an epoch (about
80 s more on a 2-core CPU): the notebook's picture, not training; left off by default.
"""
import argparse
import json
import time

started = time.perf_counter()
import torch  # noqa: E402
from d2l import torch as d2l  # noqa: E402
from torch import nn  # noqa: E402


class GRU(d2l.RNN):
    """The multilayer GRU model (the chapter's code, verbatim)."""
    def __init__(self, num_inputs, num_hiddens, num_layers, dropout=0):
        d2l.Module.__init__(self)
        self.save_hyperparameters()
        self.rnn = nn.GRU(num_inputs, num_hiddens, num_layers, dropout=dropout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--plot", action="store_true", help="keep d2l's live plot (the notebook's figure)")
    args = parser.parse_args()
    data = d2l.TimeMachine(batch_size=1024, num_steps=32)
    gru = GRU(num_inputs=len(data.vocab), num_hiddens=32, num_layers=2)
    model = d2l.RNNLM(gru, vocab_size=len(data.vocab), lr=2)
    model.board.display = args.plot
    trainer = d2l.Trainer(max_epochs=args.epochs, gradient_clip_val=1, num_gpus=1)
    fit_started = time.perf_counter()
    trainer.fit(model, data)
    fit_s = time.perf_counter() - fit_started
    sample = model.predict("it has", 20, data.vocab, d2l.try_gpu())
    board = model.board.data
    print(json.dumps({"train_ppl": float(board["train_ppl"][-1].y), "val_ppl": float(board["val_ppl"][-1].y),
                      "best_val_ppl": min(float(p.y) for p in board["val_ppl"]), "sample": sample,
                      "fit_s": fit_s, "in_process_s": time.perf_counter() - started, "epochs": args.epochs,
                      "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "plot": args.plot}))


if __name__ == "__main__":
    main()
