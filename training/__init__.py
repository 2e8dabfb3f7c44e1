"""Making the model: datasets from DICOM + reports, alignment, instruction tuning, DPO, recipes."""
