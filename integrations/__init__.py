"""Hospital systems: DICOMweb, DIMSE, DICOM SR / FHIR / HL7 outputs, the drafting worker."""
