"""Validation-study runner, HTML report, reader study and the ``eval`` command line, end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from radlvlm.clinical_eval.cli import eval_app
from radlvlm.clinical_eval.judges import StructuredJudge
from radlvlm.clinical_eval.reader import GRADE_COLUMNS, import_grades, make_reader_packets, reader_agreement
from radlvlm.clinical_eval.runner import run_validation_study
from radlvlm.errors import EvaluationInputError

runner = CliRunner()

REPORTS = [
    "The heart is normal in size. The lungs are clear. No pleural effusion.",
    "Mild cardiomegaly. Small left pleural effusion. No pneumothorax.",
    "Right lower lobe consolidation concerning for pneumonia.",
    "Moderate pulmonary edema. Bilateral pleural effusions.",
    "Stable 1 cm nodule in the right upper lobe. No acute disease.",
    "Left apical pneumothorax. Mild bibasilar atelectasis.",
]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def study(tmp_path: Path) -> dict[str, Path]:
    refs = [{"id": f"s{i}", "reference": REPORTS[i % 6], "indication": "cough"} for i in range(24)]
    good = [
        {"id": f"s{i}", "prediction": REPORTS[i % 6] if i % 4 else REPORTS[(i + 1) % 6], "model": "sys-A"}
        for i in range(24)
    ]
    normal = [{"id": f"s{i}", "prediction": REPORTS[0], "model": "sys-B"} for i in range(24)]
    return {
        "refs": _write(tmp_path / "refs.jsonl", refs),
        "a": _write(tmp_path / "a.jsonl", good),
        "b": _write(tmp_path / "b.jsonl", normal),
    }


def test_report_study_writes_stamped_json_and_html(tmp_path: Path, study: dict[str, Path]) -> None:
    result = run_validation_study(
        study["a"], study["refs"], tmp_path / "out", n_boot=50, compare=study["b"], dataset="toy"
    )
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["task"] == "report" and saved["counts"]["scored"] == 24
    assert saved["stamp"]["model"] == "sys-A" and saved["stamp"]["dataset"] == "toy"
    assert saved["stamp"]["code"]["radlvlm"] and len(saved["stamp"]["references"]["sha256"]) == 64
    f1 = saved["metrics"]["clinical"]["chexpert14_positive"]["micro_f1"]
    assert f1["ci_low"] <= f1["value"] <= f1["ci_high"] and 0.5 < f1["value"] < 1
    assert "structured" in saved["metrics"]["judges"]
    assert result["comparison"]["paired"]["chexpert14_micro_f1"]["difference"] > 0
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("<svg") >= 2 and "sys-A" in html and "toy" in html and saved["stamp"]["code"]["commit"] in html
    assert "<script" not in html  # self-contained and static
    per_study = [json.loads(line) for line in (tmp_path / "out" / "per_study.jsonl").read_text().splitlines()]
    assert len(per_study) == 24 and "reference" not in per_study[0]  # ids and labels only, no text


def test_errorcheck_study_with_confidence(tmp_path: Path) -> None:
    refs = [
        {
            "id": str(i),
            "has_error": i % 2 == 0,
            "category": "wrong_location" if i % 2 == 0 else None,
            "span": [0, 4] if i % 2 == 0 else None,
            "text": "x",
        }
        for i in range(20)
    ]
    preds = [
        {
            "id": str(i),
            "prediction": json.dumps(
                {"has_error": i % 3 == 0, "category": "wrong_location" if i % 3 == 0 else None, "span": [1, 2]}
            ),
            "confidence": (i % 3 == 0) * 0.8 + 0.1,
        }
        for i in range(20)
    ]
    preds[5]["prediction"] = "I am not sure"
    result = run_validation_study(
        _write(tmp_path / "p.jsonl", preds), _write(tmp_path / "r.jsonl", refs), tmp_path / "out", n_boot=50
    )
    m = result["metrics"]
    assert result["task"] == "errorcheck" and m["n_unparseable_answers"] == 1
    assert "auroc" in m["simple"] and "complex" in m and "localization_accuracy" in m["complex"]
    assert sum(map(sum, m["simple"]["confusion_matrix"]["matrix"])) == 20  # nothing dropped
    assert sum(map(sum, m["complex"]["confusion_matrix"]["matrix"])) == 20
    assert "unparseable" in m["complex"]["confusion_matrix"]["labels"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Calibration" in html and html.count("<svg") == 3


def test_cli_run_prints_counts_and_headline(tmp_path: Path, study: dict[str, Path]) -> None:
    result = runner.invoke(
        eval_app, ["run", "-p", str(study["a"]), "-r", str(study["refs"]), "-o", str(tmp_path / "o"), "--n-boot", "30"]
    )
    assert result.exit_code == 0, result.output
    assert "predictions in: 24, references in: 24, scored: 24, dropped: 0" in result.stderr
    headline = json.loads(result.stdout)
    assert {"bleu_4", "rouge_l", "chexpert14_micro_f1"} <= set(headline)


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path, study: dict[str, Path]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "s0", "prediction": "x"}\n{oops\n')
    result = runner.invoke(eval_app, ["run", "-p", str(bad), "-r", str(study["refs"]), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "malformed JSON line(s): line 2" in result.stderr
    assert "Traceback" not in result.output
    missing = _write(tmp_path / "few.jsonl", [{"id": "s0", "prediction": "x"}])
    result = runner.invoke(eval_app, ["run", "-p", str(missing), "-r", str(study["refs"]), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "23 reference id(s) missing" in result.stderr


def test_cli_make_errorcheck_and_baselines(tmp_path: Path) -> None:
    reports = [
        {
            "uid": i,
            "split": "train" if i < 30 else "test",
            "indication": "cough" if i % 2 else "pain",
            "findings": REPORTS[i % 6],
            "impression": "No acute disease." if i % 6 == 0 else REPORTS[i % 6],
        }
        for i in range(40)
    ]
    source = _write(tmp_path / "reports.jsonl", reports)
    result = runner.invoke(eval_app, ["make-errorcheck", str(source), "-o", str(tmp_path / "ec.jsonl"), "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["splits"]["test"] == {"n": 10, "n_error": 5}
    train = _write(tmp_path / "train.jsonl", reports[:30])
    target = _write(tmp_path / "target.jsonl", reports[30:])
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 8))
    vectors[30:] = vectors[:10] + 0.01  # target study 30+k looks like training study k
    np.savez(tmp_path / "emb.npz", ids=np.array([str(i) for i in range(40)]), embeddings=vectors)
    result = runner.invoke(
        eval_app,
        [
            "baselines",
            "--embeddings",
            str(tmp_path / "emb.npz"),
            "--train",
            str(train),
            "--target",
            str(target),
            "--errorcheck",
            str(tmp_path / "ec.jsonl"),
            "-o",
            str(tmp_path / "bl"),
        ],
    )
    assert result.exit_code == 0, result.output
    for name in (
        "most_common_normal",
        "nearest_neighbour_indication",
        "errorcheck_majority_class",
        "errorcheck_consistency_checker",
    ):
        assert len((tmp_path / "bl" / f"{name}.jsonl").read_text().splitlines()) == 10
    image = [json.loads(line) for line in (tmp_path / "bl" / "nearest_neighbour_image.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in image] == [f"{REPORTS[k % 6]} {reports[k]['impression']}" for k in range(10)]
    result = runner.invoke(
        eval_app,
        [
            "run",
            "-p",
            str(tmp_path / "bl" / "errorcheck_consistency_checker.jsonl"),
            "-r",
            str(tmp_path / "bl" / "errorcheck_references_test.jsonl"),
            "-o",
            str(tmp_path / "run"),
            "--n-boot",
            "20",
        ],
    )
    assert result.exit_code == 0, result.output
    # the whole set as references, restricted to the test split
    args = [
        "run",
        "-p",
        str(tmp_path / "bl" / "errorcheck_majority_class.jsonl"),
        "-r",
        str(tmp_path / "ec.jsonl"),
        "-o",
        str(tmp_path / "run2"),
        "--n-boot",
        "20",
        "--split",
        "test",
    ]
    result = runner.invoke(eval_app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"]["reference_rows_in_file"] == 40
    result = runner.invoke(eval_app, [*args[:-1], "nope"])
    assert result.exit_code == 2 and "no row in split 'nope'" in result.stderr
    result = runner.invoke(eval_app, ["baselines", "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "nothing to do" in result.stderr


def _fill(path: Path, grades: dict[str, tuple[int, int]]) -> None:
    """Write a grade sheet: per case (omitted-finding significant count, acceptability)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(GRADE_COLUMNS)
        for code, (errors, accept) in grades.items():
            counts = [0] * (len(GRADE_COLUMNS) - 3)
            counts[2] = errors  # omitted_finding_significant
            writer.writerow([code, *counts, accept, ""])


def test_reader_study_round_trip(tmp_path: Path, study: dict[str, Path]) -> None:
    refs = [json.loads(line) for line in study["refs"].read_text().splitlines()]
    systems = {name: [json.loads(line) for line in study[name].read_text().splitlines()] for name in ("a", "b")}
    summary = make_reader_packets(refs, systems, ["r1", "r2", "r3"], tmp_path / "pk", n_studies=8, seed=4)
    assert summary["cases"] == 16 and summary["studies"] == 8
    packet = (tmp_path / "pk" / "packet_r1.html").read_text()
    assert "sys-A" not in packet and "sys-B" not in packet and 's1"' not in packet  # blinded
    orders = [[row[0] for row in csv.reader((tmp_path / "pk" / f"grades_r{k}.csv").open())][1:] for k in (1, 2, 3)]
    assert sorted(orders[0]) == sorted(orders[1]) and orders[0] != orders[1]  # same cases, own random order
    cases = [json.loads(line) for line in (tmp_path / "pk" / "coordinator" / "cases.jsonl").read_text().splitlines()]
    judge = StructuredJudge()
    truth = {c["case"]: judge.judge(c["candidate"], c["reference"]).count(significant=True) for c in cases}
    for k, reader in enumerate(("r1", "r2", "r3")):
        # readers agree with the judge, one of them off by one on a few cases
        grades = {code: (n + (k == 2 and i % 5 == 0), 1 + min(n, 3)) for i, (code, n) in enumerate(truth.items())}
        _fill(tmp_path / f"grades_{reader}.csv", grades)
    loaded = import_grades(tmp_path / "pk", [tmp_path / f"grades_r{k}.csv" for k in (1, 2, 3)])
    agreement = reader_agreement(tmp_path / "pk", loaded, [judge])
    assert agreement["pairs"]["r1~r2"]["acceptability_kappa"] == pytest.approx(1.0)
    assert 0 < agreement["fleiss_kappa"]["acceptability"] <= 1
    assert agreement["judges"]["structured"]["kendall_tau_significant_errors"]["tau"] > 0.8
    assert (
        agreement["per_system"]["a"]["mean_significant_errors"]
        < agreement["per_system"]["b"]["mean_significant_errors"]
    )
    result = runner.invoke(
        eval_app,
        [
            "reader-import",
            "--packets",
            str(tmp_path / "pk"),
            str(tmp_path / "grades_r1.csv"),
            str(tmp_path / "grades_r2.csv"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["readers"] == ["r1", "r2"]


def test_reader_import_rejects_bad_sheets(tmp_path: Path, study: dict[str, Path]) -> None:
    refs = [json.loads(line) for line in study["refs"].read_text().splitlines()]
    systems = {"a": [json.loads(line) for line in study["a"].read_text().splitlines()]}
    make_reader_packets(refs, systems, ["r1"], tmp_path / "pk", n_studies=4)
    codes = [row[0] for row in csv.reader((tmp_path / "pk" / "grades_r1.csv").open())][1:]
    _fill(tmp_path / "grades_r1.csv", {codes[0]: (0, 1), codes[1]: (1, 7), "ZZZZZZ": (0, 1), codes[2]: (0, 2)})
    with pytest.raises(EvaluationInputError) as info:
        import_grades(tmp_path / "pk", [tmp_path / "grades_r1.csv"])
    message = str(info.value)
    assert "unknown case code: row 4" in message and f"(1-4): row 3 (case {codes[1]})" in message
    assert f"1 case(s) missing: case {codes[3]}" in message
    with pytest.raises(EvaluationInputError, match="readers must be distinct"):
        make_reader_packets(refs, systems, ["a b"], tmp_path / "x")


def test_cli_label(tmp_path: Path, study: dict[str, Path]) -> None:
    result = runner.invoke(eval_app, ["label", str(study["refs"]), "-o", str(tmp_path / "labels.jsonl")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows"] == 24 and summary["counts"]["Pneumothorax"]["positive"] == 4
    first = json.loads((tmp_path / "labels.jsonl").read_text().splitlines()[1])
    assert first["id"] == "s1" and first["labels"]["Cardiomegaly"] == "positive"
    result = runner.invoke(eval_app, ["label", str(study["refs"]), "-o", str(tmp_path / "x.jsonl"), "--field", "nope"])
    assert result.exit_code == 2 and "24 row(s) without text" in result.stderr
