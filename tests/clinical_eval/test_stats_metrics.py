"""Bootstrap CIs, paired tests, agreement coefficients and the metric functions on hand-made data."""

from __future__ import annotations

import numpy as np
import pytest
from sacrebleu.metrics import BLEU
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from radlvlm.clinical_eval.judges import StructuredJudge
from radlvlm.clinical_eval.metrics import (
    clinical_metrics,
    errorcheck_complex_metrics,
    errorcheck_simple_metrics,
    judge_metrics,
    nlg_metrics,
)
from radlvlm.clinical_eval.stats import (
    auroc,
    bootstrap,
    cohen_kappa,
    fleiss_kappa,
    kendall_tau,
    mcnemar,
    paired_bootstrap,
)
from radlvlm.reports.labeler import label_report


def _accuracy_ci(n: int) -> tuple[float, float, float]:
    rng = np.random.default_rng(1)
    correct = rng.random(n) < 0.7
    e = bootstrap(lambda idx: float(correct[idx].mean()), n, n_boot=500, seed=0)
    return e.value, e.low, e.high


def test_ci_covers_point_and_shrinks_with_n() -> None:
    widths = []
    for n in (50, 200, 2000):
        value, low, high = _accuracy_ci(n)
        assert low <= value <= high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.05


def test_bootstrap_is_seeded() -> None:
    data = np.arange(30, dtype=float)
    a = bootstrap(lambda i: data[i].mean(), 30, n_boot=200, seed=3)
    assert a == bootstrap(lambda i: data[i].mean(), 30, n_boot=200, seed=3)
    with pytest.raises(ValueError):
        bootstrap(lambda i: 0.0, 0)


def test_paired_bootstrap_and_mcnemar() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(300) < 0.8
    b = rng.random(300) < 0.6
    result = paired_bootstrap(lambda i: a[i].mean(), lambda i: b[i].mean(), 300, n_boot=500)
    assert result["ci_low"] > 0 and result["p_value"] == pytest.approx(1 / 500)  # the resolution of 500 resamples
    assert result["ci_low"] <= result["difference"] <= result["ci_high"]
    same = paired_bootstrap(lambda i: a[i].mean(), lambda i: a[i].mean(), 300, n_boot=200)
    assert same["difference"] == 0 and same["p_value"] == 1.0
    # textbook example: 10 discordant pairs split 9/1 -> exact two-sided p = 22/1024
    assert mcnemar([1] * 9 + [0] + [1] * 5, [0] * 9 + [1] + [1] * 5) == {
        "a_only": 9,
        "b_only": 1,
        "p_value": pytest.approx(22 / 1024),
    }
    assert mcnemar([1, 0], [1, 0])["p_value"] == 1.0


def test_agreement_coefficients_match_references() -> None:
    rng = np.random.default_rng(2)
    x = list(rng.integers(1, 5, 80))
    y = [v if rng.random() < 0.6 else int(rng.integers(1, 5)) for v in x]
    assert cohen_kappa(x, y) == pytest.approx(cohen_kappa_score(x, y))
    assert cohen_kappa(x, y, weights="quadratic") == pytest.approx(cohen_kappa_score(x, y, weights="quadratic"))
    labels = list(rng.integers(0, 2, 50))
    scores = list(rng.random(50) + np.array(labels) * 0.3)
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert auroc([1, 0, 1], [0.5, 0.5, 0.5]) == 0.5 and np.isnan(auroc([1, 1], [0.1, 0.2]))
    # Fleiss (1971) style check: perfect agreement is 1, and a known small table
    assert fleiss_kappa([[1, 1, 1], [2, 2, 2], [1, 1, 1]]) == pytest.approx(1.0)
    table = [[1, 1, 2], [2, 2, 2], [1, 2, 2], [1, 1, 1]]
    # P_i = (1/3, 1, 1/3, 1) -> P = 2/3; six 1s and six 2s -> p_j = (1/2, 1/2), Pe = 1/2 -> kappa = 1/3
    assert fleiss_kappa(table) == pytest.approx(1 / 3)
    tau = kendall_tau([1, 2, 3, 4], [1, 2, 3, 4])
    assert tau["tau"] == pytest.approx(1.0)


REFS = ["The heart is normal in size. The lungs are clear.", "Mild cardiomegaly. Small left pleural effusion."]


def test_nlg_metrics_equal_sacrebleu_corpus_scores() -> None:
    preds = ["The heart is normal. The lungs are clear.", "Cardiomegaly. Small left effusion."]
    result = nlg_metrics(preds, REFS, n_boot=50)
    for order in (1, 4):
        expected = BLEU(lowercase=True, max_ngram_order=order).corpus_score(preds, [REFS]).score / 100
        assert result[f"bleu_{order}"]["value"] == pytest.approx(expected)
    assert nlg_metrics(REFS, REFS, n_boot=20)["rouge_l"]["value"] == pytest.approx(1.0)
    assert 0 < result["rouge_l"]["value"] < 1


def test_clinical_metrics_known_counts() -> None:
    refs = [label_report(t) for t in ["Mild cardiomegaly. Small left pleural effusion.", "Right pneumothorax."]]
    preds = [label_report(t) for t in ["Mild cardiomegaly. No effusion.", "Right pneumothorax. Possible edema."]]
    m = clinical_metrics(preds, refs, n_boot=50)
    # positive: TP cardiomegaly, pneumothorax; FN effusion; FP none -> P=1, R=2/3, micro F1 = 0.8
    assert m["chexpert14_positive"]["micro_f1"]["value"] == pytest.approx(0.8)
    # positive+uncertain adds a false positive (edema): P=2/3, R=2/3
    assert m["chexpert14_positive_or_uncertain"]["micro_f1"]["value"] == pytest.approx(2 / 3)
    # CheXpert-5 over supported labels: cardiomegaly F1 1, effusion F1 0 -> macro 0.5
    assert m["chexpert5_positive"]["macro_f1"]["value"] == pytest.approx(0.5)
    assert m["per_label_positive"]["Pleural Effusion"]["recall"]["value"] == 0.0
    assert "Edema" in m["chexpert5_positive"]["labels_without_support"]


def test_errorcheck_simple_metrics() -> None:
    truth = [True, True, False, False, True, False]
    pred = [True, False, False, True, True, False]
    conf = [0.9, 0.4, 0.2, 0.6, 0.8, 0.1]
    m = errorcheck_simple_metrics(truth, pred, conf, n_boot=50)
    assert m["accuracy"]["value"] == pytest.approx(4 / 6)
    assert m["precision"]["value"] == pytest.approx(2 / 3) and m["recall"]["value"] == pytest.approx(2 / 3)
    assert m["confusion_matrix"]["matrix"] == [[2, 1], [1, 2]]
    assert m["auroc"]["value"] == pytest.approx(roc_auc_score(truth, conf))
    assert sum(b["n"] for b in m["calibration"]["bins"]) == 6


def test_errorcheck_complex_metrics() -> None:
    truth = ["wrong_location", "wrong_location", None, "false_finding"]
    pred = ["wrong_location", "false_finding", None, "false_finding"]
    spans = [[0, 4], [10, 12], None, [5, 5]]
    pred_spans = [[2, 6], [0, 3], None, [0, 9]]
    m = errorcheck_complex_metrics(truth, pred, spans, pred_spans, n_boot=50)
    assert m["accuracy"]["value"] == pytest.approx(0.75)
    assert m["per_type_accuracy"]["wrong_location"]["value"] == pytest.approx(0.5)
    assert m["localization_accuracy"]["value"] == pytest.approx(2 / 3)
    labels = m["confusion_matrix"]["labels"]
    assert m["confusion_matrix"]["matrix"][labels.index("wrong_location")][labels.index("false_finding")] == 1
    # per-class F1: none 1, wrong_location 2/3, false_finding 2/3
    assert m["macro_f1"]["value"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_judge_metrics_means() -> None:
    judge = StructuredJudge()
    results = [judge.judge("No acute disease.", REFS[1]), judge.judge(REFS[1], REFS[1])]
    m = judge_metrics(results, n_boot=50)
    assert m["significant_errors_per_report"]["value"] == pytest.approx(1.0)
    assert m["per_category"]["omitted_finding"]["significant"]["value"] == pytest.approx(1.0)
    assert m["share_reports_without_significant_error"]["value"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        errorcheck_simple_metrics([True], [True, False])
