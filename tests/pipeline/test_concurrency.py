"""De-identification under a thread pool, as the service runs it: every request gets exactly what it would get
alone, and nothing one request saw (a name, an attribute, a warnings filter) reaches another."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

from pydicom import dcmread
from testsupport import pydicom_file

from radlvlm.errors import DeidentificationError
from radlvlm.safety.dicom_deid import DicomDeidentifier
from radlvlm.safety.pseudonyms import PseudonymMap

KEY = b"k" * 32
FILES = ("RG1_UNCR.dcm", "CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb.dcm")


def _fresh() -> DicomDeidentifier:
    return DicomDeidentifier(PseudonymMap(KEY, record=False))


def test_concurrent_deidentification_gives_each_request_its_serial_answer() -> None:
    inputs = [pydicom_file(name).read_bytes() for name in FILES]
    serial = [_fresh().deidentify_bytes(data, name=name)[0] for data, name in zip(inputs, FILES, strict=True)]
    filters_before = list(warnings.filters)
    jobs = [(data, name) for data, name in zip(inputs, FILES, strict=True)] * 6
    with ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(lambda job: _fresh().deidentify_bytes(job[0], name=job[1])[0], jobs))
    assert outputs == serial * 6
    # The silence around pydicom is counted, not saved and restored per call: overlapping calls leave the
    # process's warning filters as they found them.
    assert warnings.filters == filters_before


def test_a_failing_request_names_its_own_attribute_while_others_run(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A fault injected at one attribute of some requests: each error names that attribute, though other
    requests walk other attributes meanwhile (the attribute being handled is the call's own, not shared)."""
    import time

    original = DicomDeidentifier._apply

    def faulty(self, dataset, elem, action, context, depth):  # type: ignore[no-untyped-def]
        if context.name.startswith("bad") and elem.keyword == "PatientAge":
            time.sleep(0.05)  # other threads move on to other attributes meanwhile
            raise RuntimeError("injected")
        return original(self, dataset, elem, action, context, depth)

    monkeypatch.setattr(DicomDeidentifier, "_apply", faulty)
    source = dcmread(pydicom_file("CT_small.dcm"))
    assert "PatientAge" in source

    def run(index: int) -> str:
        name = f"bad{index}" if index % 2 == 0 else f"good{index}"
        try:
            _fresh().deidentify_dataset(source, name=name)
        except DeidentificationError as e:
            return str(e)
        return "done"

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(run, range(24)))
    for index, answer in enumerate(answers):
        if index % 2 == 0:
            assert answer == f"bad{index}: de-identification failed at PatientAge (RuntimeError)"
        else:
            assert answer == "done"
