"""Clinical evaluation: labeler, error scoring, NLG/clinical/error-check metrics, validation studies."""
