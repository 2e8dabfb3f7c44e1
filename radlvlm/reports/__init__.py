"""Radiology report text: split free-text reports into sections, normalise text, split sentences."""

from radlvlm.reports.normalize import DEID_TOKEN, normalize_text, split_sentences
from radlvlm.reports.sections import SECTION_ORDER, ReportSections, parse_openi_xml, parse_report

__all__ = [
    "DEID_TOKEN",
    "SECTION_ORDER",
    "ReportSections",
    "normalize_text",
    "parse_openi_xml",
    "parse_report",
    "split_sentences",
]
