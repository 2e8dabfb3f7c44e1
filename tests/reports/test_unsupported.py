"""What a finding list cannot support: side, location, size, devices, comparisons, incidentals, advice,
redactions, views not given."""

from __future__ import annotations

import pytest

from radlvlm.reports.unsupported import unsupported_kinds, unsupported_sentences


@pytest.mark.parametrize(
    ("sentence", "kinds"),
    [
        ("Small left pleural effusion.", {"side", "size"}),
        ("Calcified granuloma in the right upper lobe.", {"incidental", "side"}),
        ("There is lingular airspace disease.", {"location"}),
        ("Streaky perihilar opacities.", {"location"}),
        ("The costophrenic angles are sharp.", set()),  # anatomy in a normal statement: no finding placed
        ("No focal airspace disease in the lower lobes.", set()),
        ("Stable cardiomegaly.", {"comparison"}),
        ("Sternotomy wires are present.", {"device", "incidental"}),
        ("CT chest with contrast is recommended.", {"advice"}),
        ("There is XXXX opacity.", {"redacted"}),
        ("Cardiomegaly.", set()),
        ("Pleural effusion.", set()),
        ("No pleural effusion or large pneumothorax.", set()),  # a pure negation asserts no size
        ("Heart size is normal.", set()),
        ("No change from prior study.", {"comparison"}),
        # A draft of one frontal film was given no lateral: a statement about one is unsupported, anatomy is not.
        ("Streaky airspace disease is demonstrated on the lateral examination.", {"view"}),
        ("PA and lateral views of the chest were obtained.", {"view"}),
        ("No effusion on the lateral view.", {"view"}),
        ("Subcutaneous emphysema of the left lateral chest wall.", {"incidental", "side"}),
        # Airway findings are outside the classifier's labels, though the labeler reads cuffing as an opacity.
        ("Peribronchial cuffing also noted.", {"incidental"}),
    ],
)
def test_kinds_of_one_sentence(sentence: str, kinds: set[str]) -> None:
    assert unsupported_kinds(sentence) == kinds


def test_only_the_unsupported_sentences_of_a_report_are_returned() -> None:
    found = unsupported_sentences("Cardiomegaly. Small left effusion. The lungs are clear.")
    assert [s for s, _ in found] == ["Small left effusion."]
