"""PHI and clinical guards: DICOM and report de-identification, guardrails, audit trail."""
