"""twotower-lab: ``lib.core`` (knows no study), one package per study with the same inner
shape (``lib.movielens``, ``lib.wikiseq``), and ``lib.run``, the command line."""
