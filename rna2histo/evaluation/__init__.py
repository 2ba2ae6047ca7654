"""Evaluation of trained generators: the study's image metrics and biological faithfulness."""
