"""What every stage shares, at the bottom of the layout: command-line conventions, console filtering,
atomic writes, directory locks, text normalisation and vocabularies, the book's reference figures."""
