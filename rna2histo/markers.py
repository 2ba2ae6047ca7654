"""Marker genes of the tissue programs, as HGNC symbols.

They define the programs of the simulated cohort and score the same programs in real RNA
(TCGA, your own data): a program score is the mean z-score of its markers present in a profile.
"""

MARKERS: dict[str, list[str]] = {
    # tumour epithelium; NKX2-1, NAPSA and the surfactants mark lung adenocarcinoma
    "epithelial": ["EPCAM", "KRT8", "KRT18", "KRT19", "KRT7", "CDH1", "NKX2-1", "NAPSA", "SFTPB", "SFTPC", "MUC1", "CLDN4"],
    # lymphocytic infiltrate: pan-leukocyte, T-cell, B-cell and cytotoxic markers
    "immune": ["PTPRC", "CD3E", "CD3D", "CD2", "CD8A", "CD4", "MS4A1", "CD19", "CD79A", "GZMB", "CCL5", "CXCL13"],
    # fibrous stroma: collagens, proteoglycans and cancer-associated fibroblasts
    "stroma": ["COL1A1", "COL1A2", "COL3A1", "DCN", "LUM", "FAP", "PDGFRB", "ACTA2", "POSTN", "SPARC", "FN1", "THY1"],
    # cell cycle: S phase and G2/M genes
    "proliferation": ["MKI67", "TOP2A", "CCNB1", "BUB1", "CDK1", "MCM2", "PCNA", "AURKA", "CCNA2", "E2F1", "CENPF", "TYMS"],
    # alveolar air space: type I pneumocytes and alveolar capillaries (normal lung around a tumour)
    "lumen": ["AGER", "CLDN18", "EMP2", "CAV1", "HOPX", "RTKN2", "AQP1", "CA4", "SCEL", "SEMA3B"],
}

PROGRAMS: tuple[str, ...] = tuple(MARKERS)
