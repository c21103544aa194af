"""python -m training: the same as the train-mmr console script."""

from .cli import main

main()
