"""Sequence retrieval pieces for the wikiseq study: bank, windows, towers, training, retrieval, report."""
