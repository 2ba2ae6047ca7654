"""rna2histo."""
