"""The dataset layer on the real public data in ../shared/data (IU-Xray, COVID-19 collection, NIH ChestX-ray14)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from testsupport import shared_path

from radlvlm.errors import InputError
from radlvlm.training.data import Example, ExampleDataset, TaskMixture, build_examples, write_manifest
from radlvlm.training.pseudo_pairs import LabelMatchedPairs, nih_key, report_key
from radlvlm.training.sources import SPLITS, CovidSource, IUXraySource, NIHSource, sources_from_config

KNOWN_DROPS = {
    "empty report",
    "lateral only",
    "image missing",
    "duplicate image",
    "no radiographic description",
}


@pytest.fixture(scope="module")
def iu_root() -> Path:
    return shared_path("iu_xray")


@pytest.fixture(scope="module")
def nih_manifest() -> Path:
    return shared_path("nih_cxr14", "manifest.jsonl")


@pytest.fixture(scope="module")
def covid_manifest() -> Path:
    return shared_path("covid_chestxray", "manifest.jsonl")


@pytest.fixture(scope="module")
def pairs(iu_root: Path, nih_manifest: Path) -> LabelMatchedPairs:
    return LabelMatchedPairs(NIHSource(nih_manifest, limit=60), IUXraySource(iu_root, limit=400), k=2, seed=0)


def _all(dataset: ExampleDataset) -> list[tuple[str, str, str, str, str]]:
    return [
        (m["study_id"], m["task"], m["source"], *dataset.text(i))
        for i, m in enumerate(map(dataset.metadata, range(len(dataset))))
    ]


# ------------------------------------------------------------------------------------------------ mixture
def test_mixture_is_validated() -> None:
    with pytest.raises(InputError, match="draft"):
        TaskMixture(draft=-1)
    with pytest.raises(InputError, match="all be 0"):
        TaskMixture(draft=0, check_simple=0, check_complex=0)
    with pytest.raises(InputError, match="finite"):
        TaskMixture(check_simple=float("nan"))
    with pytest.raises(InputError, match="error_fraction"):
        TaskMixture(error_fraction=1.0)
    with pytest.raises(InputError, match="max_examples"):
        TaskMixture(max_examples=0)
    for bad in (0, 1.5, True):
        with pytest.raises(InputError, match="check_variants"):
            TaskMixture(check_variants=bad)
    assert TaskMixture.from_dict({"check_variants": 4}).to_dict()["check_variants"] == 4
    with pytest.raises(InputError, match=r"unknown mixture key\(s\) \['drafts'\]"):
        TaskMixture.from_dict({"drafts": 1})
    mixture = TaskMixture.from_dict({"draft": 2, "check_simple": 1, "check_complex": 1})
    assert mixture.shares == {"draft": 0.5, "check_simple": 0.25, "check_complex": 0.25, "check_image": 0.0}
    assert TaskMixture.from_dict(mixture.to_dict()) == mixture


# ------------------------------------------------------------------------------------------------ IU-Xray
def test_iu_without_images_gives_text_only_check_examples(iu_root: Path) -> None:
    source = IUXraySource(iu_root, limit=40)
    mixture = TaskMixture(draft=0, check_simple=1, check_complex=1, error_fraction=0.5)
    dataset, report = build_examples([source], mixture=mixture, split="train", seed=0)
    assert report.sources["iu_xray"].kept + sum(report.sources["iu_xray"].dropped.values()) == 40
    assert report.sources["iu_xray"].notes["no image: check tasks only"] == report.sources["iu_xray"].kept
    counts = dataset.task_counts()
    assert counts["draft"] == 0 and counts["check_simple"] == counts["check_complex"] == report.sources["iu_xray"].kept
    errors = Counter()
    for index in range(len(dataset)):
        example = dataset[index]
        assert isinstance(example, Example) and example.image is None and example.source == "iu_xray"
        assert "<image>" not in example.instruction and "REPORT:" in example.instruction
        meta = dataset.metadata(index)
        if example.task == "check_simple":
            assert example.response == ("yes" if meta["has_error"] else "no")
            errors[meta["has_error"]] += 1
        else:
            answer = json.loads(example.response)
            assert answer["has_error"] is meta["has_error"] and answer["category"] == meta["category"]
    assert abs(errors[True] - errors[False]) <= 2  # error_fraction 0.5


def test_drafting_without_images_is_a_clear_error(iu_root: Path) -> None:
    with pytest.raises(InputError, match=r"'draft' examples but no source gives any for split 'train'.*image_root"):
        build_examples([IUXraySource(iu_root, limit=5)], mixture=TaskMixture(), split="train", seed=0)


def test_iu_with_an_image_root_drafts_from_found_frontal_images(iu_root: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (iu_root / "train.jsonl").read_text().splitlines()[:6]]
    images = tmp_path / "images"
    images.mkdir()
    png = shared_path("nih_cxr14", "images", "00000001_000.png").read_bytes()  # any real radiograph PNG
    for row in rows[:3]:
        frontal = row["projections"].index("Frontal")
        (images / row["image_files"][frontal]).write_bytes(png)
    source = IUXraySource(iu_root / "train.jsonl", image_root=images, limit=6)
    mixture = TaskMixture(draft=1, check_simple=0, check_complex=0)
    dataset, report = build_examples([source], mixture=mixture, split="train", seed=1)
    with_findings = sum(1 for row in rows[:3] if row["findings"].strip())
    assert len(dataset) == with_findings
    assert report.sources["iu_xray"].notes["image missing: check tasks only"] == 3
    example = dataset[0]
    assert example.task == "draft" and example.response.startswith("FINDINGS:")
    assert example.image is not None and example.image.dtype == torch.float32 and example.image.ndim == 2


# ------------------------------------------------------------------------------------------------ COVID, NIH
def test_covid_draft_examples_from_notes(covid_manifest: Path) -> None:
    source = CovidSource(covid_manifest, limit=40)
    dataset, report = build_examples(
        [source], mixture=TaskMixture(check_simple=0, check_complex=0), split="train", seed=0
    )
    counts = report.sources["covid"]
    assert counts.kept == len(dataset) > 0
    assert counts.kept + sum(counts.dropped.values()) == 40
    assert set(counts.dropped) <= KNOWN_DROPS
    for index in range(min(len(dataset), 5)):
        example = dataset[index]
        assert example.task == "draft" and example.response.startswith("FINDINGS: ")
        assert " CT " not in f" {example.response} "
        assert example.image is not None and example.image.ndim == 2
        assert float(example.image.min()) >= 0.0 and float(example.image.max()) <= 1.0


def test_nih_label_templated_drafts(nih_manifest: Path) -> None:
    dataset, report = build_examples(
        [NIHSource(nih_manifest, limit=30)], mixture=TaskMixture(check_simple=0, check_complex=0), split="test", seed=0
    )
    assert report.sources["nih_cxr14"].kept == len(dataset) == 30
    responses = {dataset.text(i)[1] for i in range(len(dataset))}
    assert "IMPRESSION: No acute cardiopulmonary abnormality." in responses
    assert any("Cardiomegaly." in r for r in responses)
    assert dataset[0].image.shape[0] >= 64


# ------------------------------------------------------------------------------------------------ pseudo-pairs
def test_pseudo_pair_keys() -> None:
    assert nih_key(["No Finding"]) == frozenset()
    assert nih_key(["Effusion", "Infiltration"]) == {"Pleural Effusion", "Lung Opacity"}
    assert nih_key(["Atelectasis", "Infiltration"]) == {"Atelectasis"}  # a child of Lung Opacity absorbs it
    assert report_key("The lungs are clear. No pleural effusion or pneumothorax.", "Normal chest.") == frozenset()
    assert report_key("The heart is enlarged.", "Cardiomegaly.") == {"Cardiomegaly"}
    assert report_key("Possible small left effusion.", "") is None  # uncertain: never paired
    assert report_key("Right PICC line in place. Lungs clear.", "") is None  # support device: NIH cannot label it
    assert report_key("Hyperexpanded lungs.", "Emphysema.", ["Pulmonary Emphysema"]) >= {"Emphysema"}


def test_pseudo_pairs_match_labels_within_one_split(pairs: LabelMatchedPairs) -> None:
    reports = {f"iu-{row['uid']}": row for row in pairs.reports.rows()}
    images = {r.study_id: r for r in pairs.nih.records() if hasattr(r, "study_id")}
    records = [r for r in pairs.records() if hasattr(r, "study_id")]
    assert records
    per_image = Counter(r.extra["image_study"] for r in records)
    assert max(per_image.values()) <= 2
    for record in records:
        report = reports[record.extra["report_study"]]
        image = images[record.extra["image_study"]]
        assert report["split"] == image.split == record.split  # no report crosses splits
        assert report_key(report["findings"], report["impression"], report["problems"]) == nih_key(image.labels)
        assert record.image == image.image and record.patient_id == image.patient_id and not record.indication
    again = [r for r in LabelMatchedPairs(pairs.nih, pairs.reports, k=2, seed=0).records() if hasattr(r, "study_id")]
    assert [r.study_id for r in again] == [r.study_id for r in records]
    other = [r for r in LabelMatchedPairs(pairs.nih, pairs.reports, k=2, seed=1).records() if hasattr(r, "study_id")]
    assert [r.study_id for r in other] != [r.study_id for r in records]


# ------------------------------------------------------------------------------------------------ the whole set
def test_mixture_proportions_determinism_and_report(iu_root: Path, nih_manifest: Path) -> None:
    sources = [IUXraySource(iu_root, limit=60), NIHSource(nih_manifest, limit=100)]
    mixture = TaskMixture(draft=2, check_simple=1, check_complex=1)
    dataset, report = build_examples(sources, mixture=mixture, split="train", seed=7)
    counts = dataset.task_counts()
    assert report.pools["draft"] == 100 and report.pools["check_simple"] == report.sources["iu_xray"].kept
    assert counts == report.task_counts()
    assert counts["draft"] == 100 and counts["check_simple"] == counts["check_complex"] == 50
    again, _ = build_examples(sources, mixture=mixture, split="train", seed=7)
    assert _all(again) == _all(dataset)
    other, _ = build_examples(sources, mixture=mixture, split="train", seed=8)
    assert _all(other) != _all(dataset) and sorted(_all(other)) != sorted(_all(dataset))
    capped, _ = build_examples(
        sources, mixture=TaskMixture(draft=2, check_simple=1, check_complex=1, max_examples=20), split="train", seed=7
    )
    assert capped.task_counts() == {"draft": 10, "check_simple": 5, "check_complex": 5, "check_image": 0}

    data = json.loads(report.to_json())
    assert data["sources"]["iu_xray"]["kept"] == report.sources["iu_xray"].kept
    assert data["task_counts"] == counts and data["n_examples"] == len(dataset)
    table = str(report)
    assert "iu_xray" in table and "nih_cxr14" in table and "no image: check tasks only" in table


def test_check_variants_give_more_varied_check_examples_for_train_only(iu_root: Path, nih_manifest: Path) -> None:
    from radlvlm.tasks import build_errorcheck_set, errorcheck_prompt
    from radlvlm.training.data import _rank
    from radlvlm.training.sources import Record

    source = IUXraySource(iu_root, limit=60)
    checks = TaskMixture(draft=0, check_simple=1, check_complex=1)
    base, base_report = build_examples([source], mixture=checks, split="train", seed=3)
    kept = base_report.sources["iu_xray"].kept
    # check_variants=1 is exactly what the check tasks gave before: one build_errorcheck_set row per study.
    assert _all(base) == _all(
        build_examples(
            [source], mixture=TaskMixture(**{**checks.to_dict(), "check_variants": 1}), split="train", seed=3
        )[0]
    )
    simple = sorted(
        base.text(i) for i, m in enumerate(map(base.metadata, range(len(base)))) if m["task"] == "check_simple"
    )
    records = [r for r in source.records() if isinstance(r, Record) and r.split == "train"]
    rows, _ = build_errorcheck_set(
        [{"uid": r.study_id, "split": "train", "findings": r.findings, "impression": r.impression} for r in records],
        seed=_rank(3, "check_simple") % (2**31),
    )
    assert simple == sorted((errorcheck_prompt("simple", r["text"]), r["simple_target"]) for r in rows)
    assert all("family" not in base.metadata(i) for i in range(len(base)))

    varied, report = build_examples(
        [source], mixture=TaskMixture(draft=0, check_simple=1, check_complex=1, check_variants=4), split="train", seed=3
    )
    assert report.pools["check_simple"] == 4 * kept
    counts = varied.task_counts()
    assert counts["check_simple"] == counts["check_complex"] == 4 * kept
    meta = [varied.metadata(i) for i in range(len(varied))]
    assert {m["variant"] for m in meta} == {0, 1, 2, 3}
    assert abs(sum(m["has_error"] for m in meta) / len(meta) - 0.5) < 0.05
    assert len({m["family"] for m in meta if m["has_error"]}) >= 8
    assert {m["split"] for m in meta} == {"train"}
    assert _all(varied) == _all(
        build_examples(
            [source],
            mixture=TaskMixture(draft=0, check_simple=1, check_complex=1, check_variants=4),
            split="train",
            seed=3,
        )[0]
    )
    # Shares stay shares of examples: drafting limits the dataset, the check rows are down-sampled to their share.
    sources = [source, NIHSource(nih_manifest, limit=100)]
    mixed, mixed_report = build_examples(
        sources, mixture=TaskMixture(draft=1, check_simple=1, check_complex=1, check_variants=8), split="train", seed=7
    )
    assert mixed.task_counts() == {"draft": 100, "check_simple": 100, "check_complex": 100, "check_image": 0}
    assert mixed_report.pools["check_simple"] == 8 * mixed_report.sources["iu_xray"].kept
    # Validation and test keep one row per study.
    validation, val_report = build_examples(
        [source],
        mixture=TaskMixture(draft=0, check_simple=1, check_complex=1, check_variants=8),
        split="validation",
        seed=3,
    )
    assert validation.task_counts()["check_simple"] == val_report.sources["iu_xray"].kept
    assert all("variant" not in validation.metadata(i) for i in range(len(validation)))


def test_no_patient_or_study_in_two_splits(iu_root: Path, nih_manifest: Path, covid_manifest: Path, pairs) -> None:
    sources = [pairs.reports, pairs.nih, CovidSource(covid_manifest, limit=60), pairs]
    seen: dict[str, dict[str, set[str]]] = {"patient": {}, "study": {}}
    for split in SPLITS:
        mixture = TaskMixture(max_examples=200)
        dataset, _ = build_examples(sources, mixture=mixture, split=split, seed=0)
        for index in range(len(dataset)):
            meta = dataset.metadata(index)
            assert meta["split"] == split
            seen["patient"].setdefault(meta["patient_id"], set()).add(split)
            seen["study"].setdefault(meta["study_id"], set()).add(split)
            if "report_study" in meta:
                seen["study"].setdefault(meta["report_study"], set()).add(split)
    for kind in seen:
        assert all(len(splits) == 1 for splits in seen[kind].values()), kind


def test_a_patient_in_two_splits_is_refused(nih_manifest: Path, tmp_path: Path) -> None:
    lines = nih_manifest.read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    patient = rows[0]["patient_id"]
    moved = [dict(row, split="train") if row["patient_id"] == patient else row for row in rows]
    moved[0]["split"] = "test" if rows[0]["split"] != "test" else "validation"
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in moved))
    (tmp_path / "images").symlink_to(nih_manifest.parent / "images")
    with pytest.raises(InputError, match=f"patient nih-p{patient} is in split"):
        build_examples([NIHSource(manifest)], mixture=TaskMixture(), split="train", seed=0)


def test_write_manifest(iu_root: Path, nih_manifest: Path, tmp_path: Path) -> None:
    dataset, _ = build_examples(
        [IUXraySource(iu_root, limit=10), NIHSource(nih_manifest, limit=10)],
        mixture=TaskMixture(),
        split="validation",
        seed=0,
    )
    path = write_manifest(dataset, tmp_path / "out" / "validation.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == len(dataset)
    assert {row["task"] for row in rows} == {"draft", "check_simple", "check_complex"}
    for row in rows:
        assert {"study_id", "patient_id", "task", "split", "source", "image", "instruction", "response"} <= row.keys()
        assert row["split"] == "validation" and "pixels" not in row
        assert row["image"] is None or row["image"].startswith("nih_cxr14/images/")


# ------------------------------------------------------------------------------------------------ bad input
def test_manifest_errors_name_file_and_row(iu_root: Path, nih_manifest: Path, tmp_path: Path) -> None:
    row = json.loads((iu_root / "validation.jsonl").read_text().splitlines()[0])
    bad = tmp_path / "validation.jsonl"
    bad.write_text(json.dumps(row) + "\n" + json.dumps({**row, "uid": "x1", "surprise": 1}) + "\n")
    with pytest.raises(InputError, match=r"validation.jsonl: line 2: unknown key\(s\) \['surprise'\]") as error:
        IUXraySource(bad).validate()
    assert row["findings"][:20] not in str(error.value)
    empty = tmp_path / "empty" / "manifest.jsonl"
    empty.parent.mkdir()
    empty.write_text("\n")
    with pytest.raises(InputError, match=r"manifest\.jsonl: manifest is empty"):
        NIHSource(empty).validate()
    with pytest.raises(InputError, match="not found"):
        CovidSource(tmp_path / "nope.jsonl").validate()
    with pytest.raises(InputError, match="no train/validation/test"):
        IUXraySource(tmp_path / "empty").validate()
    bad_split = tmp_path / "split" / "manifest.jsonl"
    bad_split.parent.mkdir()
    bad_split.write_text(json.dumps({**json.loads(nih_manifest.read_text().splitlines()[0]), "split": "dev"}) + "\n")
    with pytest.raises(InputError, match="line 1: split must be one of"):
        NIHSource(bad_split).validate()
    with pytest.raises(InputError, match="unique"):
        build_examples([NIHSource(nih_manifest), NIHSource(nih_manifest)], mixture=TaskMixture(), split="train", seed=0)
    with pytest.raises(InputError, match="split must be one of"):
        build_examples([NIHSource(nih_manifest)], mixture=TaskMixture(), split="dev", seed=0)


def test_sources_from_a_recipe(iu_root: Path, nih_manifest: Path, tmp_path: Path) -> None:
    base = iu_root.parent
    specs = [
        {"type": "iu_xray", "root": "iu_xray", "limit": 30},
        {"type": "nih_cxr14", "manifest": str(nih_manifest), "limit": 30, "templated": False},
        {"type": "pseudo_pairs", "images": "nih_cxr14", "reports": "iu_xray", "k": 1, "seed": 3},
    ]
    sources = sources_from_config(specs, base=base)
    assert [s.name for s in sources] == ["iu_xray", "nih_cxr14", "pseudo_pair"]
    assert isinstance(sources[2], LabelMatchedPairs) and sources[2].k == 1 and sources[2].nih is sources[1]
    assert sources[0].root == iu_root and not sources[1].templated
    with pytest.raises(InputError, match=r"data source 1 \(covid\): unknown key\(s\) \['root'\]"):
        sources_from_config([{"type": "covid", "root": "x"}])
    with pytest.raises(InputError, match="data source 1: unknown type 'mimic'"):
        sources_from_config([{"type": "mimic"}])
    with pytest.raises(InputError, match=r"missing key\(s\) \['manifest'\]"):
        sources_from_config([{"type": "nih_cxr14"}])
    with pytest.raises(InputError, match="listed before it"):
        sources_from_config([{"type": "pseudo_pairs", "images": "nih_cxr14", "reports": "iu_xray"}])
    with pytest.raises(InputError, match="needs a 'key_file'"):
        sources_from_config([{"type": "hospital", "images": "d", "reports": "r.csv", "deidentify": True}])
    hospital = sources_from_config(
        [{"type": "hospital", "images": "d", "reports": "r.csv", "deidentify": True, "key_file": "k.hex"}],
        base=tmp_path,
    )[0]
    assert hospital.deidentifier is not None and (tmp_path / "k.hex").exists()


def test_csv_manifests_read_like_jsonl(iu_root: Path, covid_manifest: Path) -> None:
    def records(source):
        return [r for r in source.records() if hasattr(r, "study_id")]

    assert records(CovidSource(covid_manifest.with_suffix(".csv"), limit=15)) == records(
        CovidSource(covid_manifest, limit=15)
    )
    assert records(IUXraySource(iu_root / "test.csv", limit=15)) == records(
        IUXraySource(iu_root / "test.jsonl", limit=15)
    )


def test_image_checks_pair_a_faithful_and_a_wrong_report_per_labelled_image(nih_manifest: Path) -> None:
    from radlvlm.tasks.errorcheck import parse_simple_answer

    sources = [NIHSource(nih_manifest, limit=30)]
    dataset, report = build_examples(
        sources, mixture=TaskMixture(draft=1, check_simple=0, check_complex=0, check_image=1), split="train", seed=5
    )
    assert report.pools["check_image"] == 2 * report.sources["nih_cxr14"].kept
    rows = [i for i in range(len(dataset)) if dataset.metadata(i)["task"] == "check_image"]
    assert len(rows) == dataset.task_counts()["draft"] == 30
    meta = [dataset.metadata(i) for i in rows]
    assert sum(m["has_error"] for m in meta) == 15  # each image once faithful, once wrong
    assert {m["kind"] for m in meta if m["has_error"]} <= {"added", "removed", "negated"}
    for i in rows:
        instruction, response = dataset.text(i)
        assert parse_simple_answer(response) == dataset.metadata(i)["has_error"]
        assert dataset.has_image(i) and "FINDINGS:" in instruction and "IMPRESSION:" in instruction
