"""Where training data comes from: one class per source, each yielding study-level records or drops.

A source never builds prompts: it reads its files, checks them, and yields :class:`Record` (one study, or one
image of a public set, with report sections and a lazy :class:`ImageRef`) or :class:`Drop` (a study left out,
with a PHI-free reason). :func:`radlvlm.training.data.build_examples` turns records into examples.

Sources:

* :class:`IUXraySource` — the IU-Xray split manifests (``train/validation/test.jsonl`` or ``.csv``). Text only
  unless ``image_root`` holds the Kaggle or Open-i PNGs.
* :class:`CovidSource` — the COVID-19 image data collection manifest (images with clinical notes).
* :class:`NIHSource` — the NIH ChestX-ray14 manifest (images with the 14 finding labels).
* :class:`HospitalSource` — a folder or zip of DICOM studies plus a reports file; de-identification enforced.
* :class:`radlvlm.training.pseudo_pairs.LabelMatchedPairs` — NIH images paired with label-matched IU reports.

Every check that can fail on a file's layout runs in ``validate()``, before any record is read; errors are
:class:`~radlvlm.errors.InputError` naming the file, the row (line number) and the key, never report text or a
header value.
"""

from __future__ import annotations

import abc
import csv
import hashlib
import io
import json
import logging
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from radlvlm.errors import InputError, RadlvlmError
from radlvlm.model.findings import NIH_LABELS
from radlvlm.reports import normalize_text, parse_report, split_sentences

if TYPE_CHECKING:
    from radlvlm.safety.dicom_deid import DicomDeidentifier
    from radlvlm.safety.pseudonyms import PseudonymMap
    from radlvlm.safety.text_deid import ReportDeidentifier

__all__ = [
    "SPLITS",
    "CovidSource",
    "Drop",
    "HospitalSource",
    "IUXraySource",
    "ImageRef",
    "NIHSource",
    "Note",
    "Record",
    "Source",
    "assign_split",
    "sources_from_config",
]

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "validation", "test")
TASKS: tuple[str, ...] = ("draft", "check_simple", "check_complex", "check_image")
_DRAFT = frozenset({"draft"})
# Records whose image has finding labels: reports that agree or disagree with them (radlvlm.tasks.image_checks).
_IMAGE_CHECK = frozenset({"check_image"})
_CHECK = frozenset({"check_simple", "check_complex"})


# --------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class ImageRef:
    """Where one image lives, read only when asked (no pixels are held).

    Args:
        path (`str`): the file, or the zip archive holding it.
        image_id (`str`): a PHI-free name for manifests and errors (a relative path of a public set, or the
            de-identified SOP Instance UID of a hospital image).
        member (`str | None`, defaults to `None`): the member inside the zip at ``path``.
    """

    path: str
    image_id: str
    member: str | None = None

    def load(self) -> torch.Tensor:
        """Display pixels ``(rows, columns)``, float32 in [0, 1], through :func:`radlvlm.imaging.read_image_file`."""
        from radlvlm.imaging import read_image_file

        try:
            if self.member is None:
                image = read_image_file(self.path, name=self.image_id)
            else:
                with zipfile.ZipFile(self.path) as archive:
                    data = archive.read(self.member)
                image = read_image_file(io.BytesIO(data), name=self.image_id)
        except (OSError, KeyError, zipfile.BadZipFile) as e:
            raise InputError(f"image {self.image_id}: cannot be read ({type(e).__name__})") from e
        return image.pixels


@dataclass(frozen=True)
class Record:
    """One study (or one image of a public set) ready to become examples.

    Args:
        study_id (`str`): pseudonymous study id, unique within the source (``iu-12``, a de-identified UID …).
        patient_id (`str`): pseudonymous patient id the split is keyed on (the study id when the source has no
            patient ids).
        split (`str`): ``train``, ``validation`` or ``test``.
        source (`str`): the source's name.
        findings (`str`, defaults to `""`): findings section (or the drafting target's findings).
        impression (`str`, defaults to `""`): impression section.
        indication (`str`, defaults to `""`): clinical indication (goes into the drafting prompt).
        image (`ImageRef | None`, defaults to `None`): the frontal image, or None for a text-only record.
        tasks (`frozenset[str]`, defaults to all three): the tasks this record may serve.
        labels (`tuple[str, ...]`, defaults to `()`): finding labels (NIH) for label matching.
        extra (`Mapping[str, str]`, defaults to `{}`): PHI-free metadata copied into manifests.
    """

    study_id: str
    patient_id: str
    split: str
    source: str
    findings: str = ""
    impression: str = ""
    indication: str = ""
    image: ImageRef | None = None
    tasks: frozenset[str] = frozenset(TASKS)
    labels: tuple[str, ...] = ()
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Drop:
    """A study left out, with a reason from a small fixed vocabulary (never a value from the data).

    ``split`` is None when the study was refused before its split could be known (a file that is not
    de-identified has no pseudonymous patient id yet).
    """

    source: str
    reason: str
    split: str | None = None


@dataclass(frozen=True)
class Note:
    """A record kept with a restriction (e.g. "no image: check tasks only"), counted in the report."""

    source: str
    note: str
    split: str | None = None


Item = Record | Drop | Note


def _take(per_split: dict[str, int], split: str, limit: int | None) -> bool:
    """Count a row towards its split; False once the split already holds ``limit`` rows (quick runs)."""
    if limit is not None and per_split.get(split, 0) >= limit:
        return False
    per_split[split] = per_split.get(split, 0) + 1
    return True


class Source(abc.ABC):
    """Base of every source: a ``name``, ``validate()`` (raises ``InputError``) and ``records()``."""

    name: str = "source"

    def validate(self) -> None:  # noqa: B027 - a source without files to check has nothing to do here
        """Check the files up front; raise :class:`~radlvlm.errors.InputError` naming the file and row."""

    @abc.abstractmethod
    def records(self) -> Iterator[Item]:
        """Yield :class:`Record`, :class:`Drop` and :class:`Note` items, in a deterministic order."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def assign_split(key: str, fractions: Mapping[str, float], *, salt: str = "radlvlm-training:split") -> str:
    """The split of ``key`` (a patient id) by a hash bucket, as the shared data's READMEs do it."""
    bucket = int(hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()[:8], 16) % 10_000 / 10_000
    cumulative = 0.0
    for name, fraction in fractions.items():
        cumulative += fraction
        if bucket < cumulative:
            return name
    return list(fractions)[-1]


# --------------------------------------------------------------------------------------------- manifests
def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(f"{path}: {what} not found")
    if not path.is_file():
        raise InputError(f"{path}: {what} is not a file")


def _read_rows(path: Path, list_keys: Iterable[str] = ()) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a JSONL or CSV manifest with their line numbers; CSV list columns are split on ``|``."""
    rows: list[tuple[int, dict[str, Any]]] = []
    suffix = path.suffix.lower()
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            if suffix == ".jsonl":
                for line_no, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise InputError(f"{path}: line {line_no} is not JSON (column {e.colno})") from None
                    if not isinstance(row, dict):
                        raise InputError(f"{path}: line {line_no} is not a JSON object")
                    rows.append((line_no, row))
            elif suffix == ".csv":
                reader = csv.DictReader(handle)
                lists = set(list_keys)
                for line_no, row in enumerate(reader, start=2):
                    if None in row:
                        raise InputError(f"{path}: line {line_no} has more fields than the header")
                    parsed: dict[str, Any] = dict(row)
                    for key in lists & parsed.keys():
                        parsed[key] = [v for v in (parsed[key] or "").split("|") if v]
                    rows.append((line_no, parsed))
            else:
                raise InputError(f"{path}: manifest must be .jsonl or .csv, not {suffix or 'no suffix'}")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({type(e).__name__})") from None
    if not rows:
        raise InputError(f"{path}: manifest is empty")
    return rows


def _check_keys(path: Path, line_no: int, row: Mapping[str, Any], known: set[str], required: set[str]) -> None:
    unknown = sorted(set(row) - known)
    if unknown:
        raise InputError(f"{path}: line {line_no}: unknown key(s) {unknown}")
    missing = sorted(required - set(row))
    if missing:
        raise InputError(f"{path}: line {line_no}: missing key(s) {missing}")


def _check_split(path: Path, line_no: int, split: object) -> str:
    if split not in SPLITS:
        raise InputError(f"{path}: line {line_no}: split must be one of {list(SPLITS)}")
    return str(split)


def _text(value: object) -> str:
    return normalize_text(str(value)) if value is not None and str(value).strip() else ""


# --------------------------------------------------------------------------------------------- IU-Xray
_IU_KEYS = {
    "uid",
    "split",
    "image_files",
    "openi_image_names",
    "projections",
    "n_frontal",
    "n_lateral",
    "images_included",
    "exam",
    "indication",
    "comparison",
    "findings",
    "impression",
    "mesh",
    "problems",
}
_IU_REQUIRED = {"uid", "split", "findings", "impression"}


class IUXraySource(Source):
    """IU-Xray (Open-i) reports from the split manifests of ``shared/data/iu_xray``.

    What it yields: one record per study with a non-empty findings or impression section (else dropped,
    "empty report"). The reports are de-identified by the source (``XXXX`` marks redactions).

    * Without ``image_root`` (the shared copy has no images) every record is **text-only** and serves the
      error-check tasks only (errors injected into findings or impression leave the two inconsistent, so the
      check is learnable from text). Drafting needs an image, so IU gives no drafting example here; the
      reports still reach drafting through :class:`~radlvlm.training.pseudo_pairs.LabelMatchedPairs`, and
      the recipe's language-model pretraining reads them through :meth:`report_texts`.
    * With ``image_root`` (a folder holding the Kaggle ``{uid}_IM-….dcm.png`` or Open-i ``CXR{uid}_IM-….png``
      files, directly or in ``images_normalized/``), a study whose first frontal image is found also serves
      drafting, when its findings are non-empty; otherwise it is kept for checking with a note saying why
      ("image missing", "lateral only", "no findings").

    Args:
        root (`str | Path`): the folder with ``{train,validation,test}.jsonl`` (or ``.csv``), or one manifest.
        image_root (`str | Path | None`, defaults to `None`): where the IU PNGs are, when a user has them.
        limit (`int | None`, defaults to `None`): keep the first ``limit`` rows of each split (fast tests).
        name (`str`, defaults to `"iu_xray"`).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        image_root: str | Path | None = None,
        limit: int | None = None,
        name: str = "iu_xray",
    ) -> None:
        self.root = Path(root)
        self.image_root = Path(image_root) if image_root is not None else None
        if limit is not None and limit < 1:
            raise InputError(f"limit must be a positive number of rows per split, got {limit}")
        self.limit = limit
        self.name = name
        self._rows: list[tuple[Path, int, dict[str, Any]]] | None = None

    def manifests(self) -> list[Path]:
        if self.root.is_file():
            return [self.root]
        if not self.root.exists():
            raise InputError(f"{self.root}: IU-Xray manifest folder not found")
        found = []
        for split in SPLITS:
            for suffix in (".jsonl", ".csv"):
                path = self.root / f"{split}{suffix}"
                if path.exists():
                    found.append(path)
                    break
        if not found:
            raise InputError(f"{self.root}: no train/validation/test .jsonl or .csv manifest in this folder")
        return found

    def validate(self) -> None:
        if self.image_root is not None and not self.image_root.is_dir():
            raise InputError(f"{self.image_root}: IU-Xray image folder not found")
        rows: list[tuple[Path, int, dict[str, Any]]] = []
        seen: dict[str, tuple[Path, int]] = {}
        per_split: dict[str, int] = {}
        for path in self.manifests():
            _require_file(path, "IU-Xray manifest")
            for line_no, row in _read_rows(
                path, ("image_files", "openi_image_names", "projections", "mesh", "problems")
            ):
                if "split" not in row and path.stem in SPLITS:
                    row["split"] = path.stem  # the flat CSVs carry their split in the file name only
                _check_keys(path, line_no, row, _IU_KEYS, _IU_REQUIRED)
                split = _check_split(path, line_no, row["split"])
                uid = str(row["uid"]).strip()
                if not uid:
                    raise InputError(f"{path}: line {line_no}: empty uid")
                if uid in seen:
                    first = seen[uid]
                    raise InputError(f"{path}: line {line_no}: uid also at {first[0]} line {first[1]}")
                seen[uid] = (path, line_no)
                if not _take(per_split, split, self.limit):
                    continue
                files, projections = row.get("image_files") or [], row.get("projections") or []
                if projections and len(projections) != len(files):
                    raise InputError(f"{path}: line {line_no}: image_files and projections differ in length")
                rows.append((path, line_no, row))
        self._rows = rows

    def _find_image(self, row: Mapping[str, Any]) -> tuple[ImageRef | None, str | None]:
        """The first frontal image found under ``image_root``, or (None, why not)."""
        assert self.image_root is not None
        files = list(row.get("image_files") or [])
        openi = list(row.get("openi_image_names") or [])
        projections = list(row.get("projections") or [])
        frontal = [i for i, p in enumerate(projections) if str(p).lower() == "frontal"]
        if projections and not frontal:
            return None, "lateral only"
        for index in frontal or range(len(files)):
            names = [files[index]] + ([openi[index]] if index < len(openi) else [])
            for name in names:
                for folder in (self.image_root, self.image_root / "images_normalized"):
                    candidate = folder / name
                    if candidate.is_file():
                        relative = candidate.relative_to(self.image_root).as_posix()
                        return ImageRef(str(candidate), f"iu_xray/{relative}"), None
        return None, "image missing"

    def _iter_rows(self) -> Iterator[tuple[Path, int, dict[str, Any]]]:
        if self._rows is None:
            self.validate()
        assert self._rows is not None
        yield from self._rows

    def report_texts(self, split: str | None = None) -> Iterator[str]:
        """Every non-empty report (findings then impression) of ``split`` (all splits when None): LM text."""
        from radlvlm.tasks import compose_report

        for _, _, row in self._iter_rows():
            if split is None or row["split"] == split:
                text = compose_report(str(row.get("findings") or ""), str(row.get("impression") or ""))
                if text:
                    yield text

    def rows(self) -> Iterator[dict[str, Any]]:
        """The validated manifest rows (for label matching)."""
        for _, _, row in self._iter_rows():
            yield row

    def records(self) -> Iterator[Item]:
        for _, _, row in self._iter_rows():
            uid, split = str(row["uid"]).strip(), str(row["split"])
            findings, impression = _text(row.get("findings")), _text(row.get("impression"))
            if not findings and not impression:
                yield Drop(self.name, "empty report", split)
                continue
            image, why = (None, "no image") if self.image_root is None else self._find_image(row)
            tasks = _CHECK
            if image is not None and findings:
                tasks = _CHECK | _DRAFT
            elif image is not None:
                why = "no findings"
            if why is not None:
                yield Note(self.name, f"{why}: check tasks only", split)
            yield Record(
                study_id=f"iu-{uid}",
                patient_id=f"iu-{uid}",  # the source has no patient id; its split is by study
                split=split,
                source=self.name,
                findings=findings,
                impression=impression,
                indication=_text(row.get("indication")),
                image=image if "draft" in tasks else None,
                tasks=tasks,
                extra={"uid": uid},
            )


# --------------------------------------------------------------------------------------------- COVID-19
_COVID_KEYS = {
    "image_file",
    "source_path",
    "metadata_row",
    "split",
    "patientid",
    "offset",
    "sex",
    "age",
    "finding",
    "view",
    "date",
    "location",
    "doi",
    "url",
    "license",
    "clinical_notes",
    "other_notes",
    "orig_width",
    "orig_height",
    "orig_mode",
    "width",
    "height",
    "source_sha256",
}
_COVID_REQUIRED = {"image_file", "split", "patientid", "view", "clinical_notes"}
_FRONTAL_VIEWS = {"PA", "AP", "AP SUPINE", "AP ERECT", "AP SEMI ERECT"}
_LATERAL_VIEWS = {"L", "LL", "LATERAL", "RL"}
# A sentence of the notes describes the radiograph when it names the modality or a radiographic finding
# and does not talk about CT (many notes describe the CT instead).
_RADIOGRAPH_WORDS = re.compile(
    r"\b(x-?ray|radiograph\w*|cxr|chest film|opacit\w*|consolidation\w*|infiltrat\w*|effusion\w*|"
    r"ground[- ]glass|atelecta\w*|pneumothora\w*|cardiomegal\w*|edema|oedema|reticula\w*|nodul\w*|"
    r"air[- ]?space|interstitial|lungs? (?:are|were) clear|hilar|perihilar)\b",
    re.IGNORECASE,
)
_NOTES_PREFIX = re.compile(r"^(?:imaging notes|findings)\s*:\s*", re.IGNORECASE)
_CT_WORDS = re.compile(r"\b(ct|computed tomography|hrct|tomograph\w*)\b", re.IGNORECASE)


def covid_findings(notes: str) -> str:
    """The sentences of a COVID-collection clinical note that describe a chest radiograph (may be empty)."""
    text = _text(notes)
    if not text:
        return ""
    kept = [s for s in split_sentences(text) if _RADIOGRAPH_WORDS.search(s) and not _CT_WORDS.search(s)]
    return " ".join(_NOTES_PREFIX.sub("", sentence) for sentence in kept)


class CovidSource(Source):
    """The COVID-19 image data collection (Cohen et al.): chest radiographs with published clinical notes.

    What it yields: one drafting record per image (rows listing an image a second time are dropped,
    "duplicate image"), split by patient as in the manifest. The target is ``FINDINGS:`` followed by the
    sentences of ``clinical_notes`` that describe a radiograph (they name an X-ray or a radiographic finding
    and do not mention CT); rows with no such sentence are dropped ("no radiographic description"), empty
    notes "empty report", lateral views "lateral only", missing files "image missing". Blank or ``?``
    views are kept (noted "view unknown").

    What this can teach: coarse image-to-description associations on real radiographs from many sites
    (bilateral opacities, consolidation, clear lungs), in case-report wording. What it cannot: the notes
    are written by case authors, not radiologists reading this image; they mix in history and outcomes,
    often describe another day's film, have no impression section and no negatives, and the set is tiny
    (about 300 usable images, mostly COVID-19 pneumonia). Use it as a small out-of-domain supplement.

    Args:
        manifest (`str | Path`): ``manifest.jsonl`` or ``manifest.csv``; image paths are relative to its folder.
        limit (`int | None`, defaults to `None`): keep the first ``limit`` rows of each split.
        name (`str`, defaults to `"covid"`).
    """

    def __init__(self, manifest: str | Path, *, limit: int | None = None, name: str = "covid") -> None:
        self.manifest = Path(manifest)
        if limit is not None and limit < 1:
            raise InputError(f"limit must be a positive number of rows per split, got {limit}")
        self.limit = limit
        self.name = name
        self._rows: list[tuple[int, dict[str, Any]]] | None = None

    def validate(self) -> None:
        _require_file(self.manifest, "COVID-19 collection manifest")
        rows, per_split = [], {}
        for line_no, row in _read_rows(self.manifest):
            _check_keys(self.manifest, line_no, row, _COVID_KEYS, _COVID_REQUIRED)
            split = _check_split(self.manifest, line_no, row["split"])
            if not str(row["patientid"]).strip():
                raise InputError(f"{self.manifest}: line {line_no}: empty patientid")
            if not _take(per_split, split, self.limit):
                continue
            rows.append((line_no, row))
        self._rows = rows

    def records(self) -> Iterator[Item]:
        if self._rows is None:
            self.validate()
        assert self._rows is not None
        seen: set[str] = set()
        root = self.manifest.parent
        for line_no, row in self._rows:
            split, image_file = str(row["split"]), str(row["image_file"])
            if image_file in seen:
                yield Drop(self.name, "duplicate image", split)
                continue
            seen.add(image_file)
            view = str(row.get("view") or "").strip().upper()
            if view in _LATERAL_VIEWS:
                yield Drop(self.name, "lateral only", split)
                continue
            path = root / image_file
            if not path.is_file():
                yield Drop(self.name, "image missing", split)
                continue
            if not _text(row.get("clinical_notes")):
                yield Drop(self.name, "empty report", split)
                continue
            findings = covid_findings(str(row["clinical_notes"]))
            if not findings:
                yield Drop(self.name, "no radiographic description", split)
                continue
            if view not in _FRONTAL_VIEWS:
                yield Note(self.name, "view unknown", split)
            yield Record(
                study_id=f"covid-{row.get('metadata_row', line_no)}",
                patient_id=f"covid-p{str(row['patientid']).strip()}",
                split=split,
                source=self.name,
                findings=findings,
                image=ImageRef(str(path), f"covid_chestxray/{image_file}"),
                tasks=_DRAFT,
                extra={"finding": str(row.get("finding") or "")},
            )


# --------------------------------------------------------------------------------------------- NIH
# Report wording of each NIH label, for label-templated drafting targets.
NIH_PHRASES: dict[str, str] = {
    "Atelectasis": "Atelectasis.",
    "Cardiomegaly": "Cardiomegaly.",
    "Effusion": "Pleural effusion.",
    "Infiltration": "Pulmonary infiltrate.",
    "Mass": "Lung mass.",
    "Nodule": "Pulmonary nodule.",
    "Pneumonia": "Pneumonia.",
    "Pneumothorax": "Pneumothorax.",
    "Consolidation": "Consolidation.",
    "Edema": "Pulmonary edema.",
    "Emphysema": "Emphysema.",
    "Fibrosis": "Pulmonary fibrosis.",
    "Pleural_Thickening": "Pleural thickening.",
    "Hernia": "Hiatal hernia.",
}
NO_FINDING_PHRASE = "No acute cardiopulmonary abnormality."
_NIH_KEYS = {
    "file",
    "image_index",
    "labels",
    "no_finding",
    "view",
    "age",
    "sex",
    "patient_id",
    "follow_up",
    "original_size",
    "split",
    "source_repo",
    "source_commit",
    "source_path",
    "source_sha256",
    "source_size",
    "source_mode",
    "stored_size",
    "also_in",
}
_NIH_REQUIRED = {"file", "image_index", "labels", "patient_id", "split"}


def nih_impression(labels: Iterable[str]) -> str:
    """The label-templated impression: one short sentence per NIH label, or the normal phrase."""
    found = [NIH_PHRASES[label] for label in NIH_LABELS if label in set(labels)]
    return " ".join(found) if found else NO_FINDING_PHRASE


class NIHSource(Source):
    """NIH ChestX-ray14 images with their 14 finding labels (NLP-mined from reports, >90% accurate).

    What it yields: one record per image (all frontal), split by patient as in the manifest, carrying the
    labels for :class:`~radlvlm.training.pseudo_pairs.LabelMatchedPairs`. With ``templated=True`` (default)
    the record also serves drafting with a **label-templated** target (``IMPRESSION: Cardiomegaly. Pleural
    effusion.`` or ``IMPRESSION: No acute cardiopulmonary abnormality.``): it teaches which findings are
    present, not where, how large, or in a radiologist's words. Most images are 64x64 thumbnails.
    Missing files are dropped ("image missing"), lateral views "lateral only", unknown labels raise.

    Args:
        manifest (`str | Path`): ``manifest.jsonl`` (or ``.csv``); image paths are relative to its folder.
        limit (`int | None`, defaults to `None`): keep the first ``limit`` rows of each split.
        templated (`bool`, defaults to `True`): records serve drafting with label-templated targets.
        name (`str`, defaults to `"nih_cxr14"`).
    """

    def __init__(
        self, manifest: str | Path, *, limit: int | None = None, templated: bool = True, name: str = "nih_cxr14"
    ) -> None:
        self.manifest = Path(manifest)
        if limit is not None and limit < 1:
            raise InputError(f"limit must be a positive number of rows per split, got {limit}")
        self.limit = limit
        self.templated = templated
        self.name = name
        self._rows: list[tuple[int, dict[str, Any]]] | None = None

    def validate(self) -> None:
        _require_file(self.manifest, "NIH ChestX-ray14 manifest")
        rows, per_split = [], {}
        known = set(NIH_LABELS) | {"No Finding"}
        for line_no, row in _read_rows(self.manifest, ("labels",)):
            _check_keys(self.manifest, line_no, row, _NIH_KEYS, _NIH_REQUIRED)
            split = _check_split(self.manifest, line_no, row["split"])
            labels = row["labels"]
            if not isinstance(labels, list) or not labels or any(label not in known for label in labels):
                raise InputError(f"{self.manifest}: line {line_no}: labels must be a non-empty list of NIH findings")
            if "No Finding" in labels and len(labels) > 1:
                raise InputError(f"{self.manifest}: line {line_no}: 'No Finding' together with findings")
            if not _take(per_split, split, self.limit):
                continue
            rows.append((line_no, row))
        self._rows = rows

    def records(self) -> Iterator[Item]:
        if self._rows is None:
            self.validate()
        assert self._rows is not None
        root = self.manifest.parent
        for _, row in self._rows:
            split = str(row["split"])
            if str(row.get("view") or "").strip().upper() in _LATERAL_VIEWS:
                yield Drop(self.name, "lateral only", split)
                continue
            path = root / str(row["file"])
            if not path.is_file():
                yield Drop(self.name, "image missing", split)
                continue
            labels = tuple(label for label in row["labels"] if label != "No Finding")
            stem = Path(str(row["image_index"])).stem
            yield Record(
                study_id=f"nih-{stem}",
                patient_id=f"nih-p{row['patient_id']}",
                split=split,
                source=self.name,
                impression=nih_impression(labels),
                image=ImageRef(str(path), f"nih_cxr14/{row['file']}"),
                tasks=(_DRAFT if self.templated else frozenset()) | _IMAGE_CHECK,
                labels=labels or ("No Finding",),
            )


# --------------------------------------------------------------------------------------------- hospital
_REPORT_COLUMNS = {"study_instance_uid", "accession_number", "report", "indication", "split"}
# Header values whose survival into report text means de-identification did not hold (checked after it).
_PHI_NAMES = ("PatientName", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName")
_PHI_IDS = ("PatientID", "AccessionNumber", "PatientBirthDate", "OtherPatientIDs", "InstitutionName")


def is_deidentified(ds: Any) -> bool:
    """True when the header says it was de-identified: Patient Identity Removed YES and a method recorded."""
    removed = str(ds.get("PatientIdentityRemoved", "") or "").strip().upper() == "YES"
    method = bool(ds.get("DeidentificationMethod")) or bool(ds.get("DeidentificationMethodCodeSequence"))
    return removed and method


@dataclass
class _Study:
    key: str  # original StudyInstanceUID (in memory only, never written)
    images: list[tuple[Any, ImageRef, int, str]] = field(default_factory=list)  # (View, ref, number, SOP UID)
    patient: str = ""  # pseudonymous patient id
    study_id: str = ""  # pseudonymous study UID
    accession: str = ""  # original accession (in memory only, for matching)
    refused: str | None = None
    phi: set[str] = field(default_factory=set)  # original identifying values (in memory only, for checking)
    date_offset: int | None = None


class HospitalSource(Source):
    """A hospital's DICOM studies (a folder, searched recursively, or a zip) plus a reports file.

    The reports file is CSV or JSONL with a ``report`` column and a ``study_instance_uid`` or
    ``accession_number`` column (optional: ``indication``, ``split``). Reports are matched to studies by
    those keys **before** de-identification; then header and report are de-identified consistently with
    one :class:`~radlvlm.safety.PseudonymMap`.

    Training refuses data that is not de-identified: a DICOM file whose header lacks Patient Identity
    Removed ``YES`` and a De-identification Method is refused (its study dropped, "not de-identified"),
    unless a ``deidentifier`` is given, which de-identifies every file on the way in (PS3.15 Annex E,
    fail closed) into ``work_dir``; a file it cannot de-identify drops its study ("de-identification
    failed"). Report text always goes through the :class:`~radlvlm.safety.ReportDeidentifier` (the
    deidentifier's own, or ``report_deidentifier``) before it becomes an example. On the de-identify-on-the-
    way-in path, the cleaned text is then checked for the original header's identifying values (name tokens,
    patient IDs, accession number, birth date, institution); a hit drops the study ("de-identification
    failed"), fail closed like the DICOM side.

    Drop reasons: "not de-identified", "de-identification failed", "unreadable image", "not DICOM",
    "lateral only" (every image is lateral), "no report" (a study no report row matches), "image missing"
    (a report row no study matches), "empty report", "no findings" (the report parses to no findings).
    Images of unknown view are used when a study has no frontal image. One record per study, on its first
    frontal image. Splits: the ``split`` column when present (a patient in two splits raises), else a hash
    of the pseudonymous Patient ID with ``split_fractions``.

    Args:
        images (`str | Path`): folder or zip of DICOM files.
        reports (`str | Path`): the reports file (``.csv`` or ``.jsonl``).
        deidentifier (`DicomDeidentifier | None`, defaults to `None`): de-identify on the way in.
        work_dir (`str | Path | None`, defaults to `None`): where de-identified files are written (a new
            temporary folder when None). Only de-identified data is written there.
        report_deidentifier (`ReportDeidentifier | None`, defaults to `None`): for report text when no
            ``deidentifier`` is given (a default one is built).
        pseudonyms (`PseudonymMap | None`, defaults to `None`): map for report text when no ``deidentifier``
            is given (None: identifiers become type tags).
        split_fractions (`Mapping[str, float]`, defaults to 0.8/0.1/0.1).
        name (`str`, defaults to `"hospital"`).
    """

    def __init__(
        self,
        images: str | Path,
        reports: str | Path,
        *,
        deidentifier: DicomDeidentifier | None = None,
        work_dir: str | Path | None = None,
        report_deidentifier: ReportDeidentifier | None = None,
        pseudonyms: PseudonymMap | None = None,
        split_fractions: Mapping[str, float] | None = None,
        name: str = "hospital",
    ) -> None:
        self.images = Path(images)
        self.reports = Path(reports)
        self.deidentifier = deidentifier
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self._report_deidentifier = report_deidentifier
        self.pseudonyms = deidentifier.pseudonyms if deidentifier is not None else pseudonyms
        self.split_fractions = dict(split_fractions or {"train": 0.8, "validation": 0.1, "test": 0.1})
        if set(self.split_fractions) - set(SPLITS) or abs(sum(self.split_fractions.values()) - 1.0) > 1e-6:
            raise InputError(f"split_fractions must use {list(SPLITS)} and sum to 1")
        self.name = name
        self._report_rows: list[tuple[int, dict[str, Any]]] | None = None
        self._key_column = ""
        self._cache: list[Item] | None = None

    @property
    def report_deidentifier(self) -> ReportDeidentifier:
        if self.deidentifier is not None:
            return self.deidentifier.text
        if self._report_deidentifier is None:
            from radlvlm.safety.text_deid import ReportDeidentifier

            self._report_deidentifier = ReportDeidentifier()
        return self._report_deidentifier

    # -------------------------------------------------------------- validation
    def validate(self) -> None:
        if not self.images.exists():
            raise InputError(f"{self.images}: DICOM folder or zip not found")
        if self.images.is_file() and not zipfile.is_zipfile(self.images):
            raise InputError(f"{self.images}: not a folder or a zip archive")
        _require_file(self.reports, "reports file")
        rows = _read_rows(self.reports)
        columns = set(rows[0][1])
        for line_no, row in rows:
            unknown = sorted(set(row) - _REPORT_COLUMNS)
            if unknown:
                raise InputError(f"{self.reports}: line {line_no}: unknown column(s) {unknown}")
            if "report" not in row:
                raise InputError(f"{self.reports}: line {line_no}: no 'report' column")
            if "split" in row and row["split"] not in (None, "") and row["split"] not in SPLITS:
                raise InputError(f"{self.reports}: line {line_no}: split must be one of {list(SPLITS)}")
        if "study_instance_uid" in columns:
            key = "study_instance_uid"
        elif "accession_number" in columns:
            key = "accession_number"
        else:
            raise InputError(f"{self.reports}: needs a 'study_instance_uid' or 'accession_number' column")
        seen: dict[str, int] = {}
        for line_no, row in rows:
            value = str(row.get(key) or "").strip()
            if not value:
                raise InputError(f"{self.reports}: line {line_no}: empty {key}")
            if value in seen:  # the value itself is not echoed: an accession number is an identifier
                raise InputError(f"{self.reports}: lines {seen[value]} and {line_no} have the same {key}")
            seen[value] = line_no
        self._report_rows, self._key_column = rows, key
        if not any(True for _ in self._entries()):
            raise InputError(f"{self.images}: no files in this folder or zip archive")

    # -------------------------------------------------------------- files
    def _entries(self) -> Iterator[tuple[str, Callable[[], bytes], str | None]]:
        """(label, read, zip member) for every candidate file, sorted; labels are never written out."""
        if self.images.is_dir():
            for path in sorted(p for p in self.images.rglob("*") if p.is_file()):
                relative = path.relative_to(self.images)
                if any(part.startswith(".") for part in relative.parts) or path.name.upper() == "DICOMDIR":
                    continue
                yield str(path), path.read_bytes, None
        else:
            with zipfile.ZipFile(self.images) as archive:
                members = sorted(m.filename for m in archive.infolist() if not m.is_dir())
            for member in members:
                if any(part.startswith(".") or part == "__MACOSX" for part in Path(member).parts):
                    continue
                if Path(member).name.upper() == "DICOMDIR":
                    continue
                yield f"{self.images}!{member}", _zip_reader(self.images, member), member

    def _scan(self) -> tuple[dict[str, _Study], list[Drop]]:
        from pydicom import dcmread
        from pydicom.errors import InvalidDicomError

        from radlvlm.imaging import read_image_file
        from radlvlm.imaging.dicom import is_plain_image
        from radlvlm.safety.dicom_deid import quiet_pydicom

        studies: dict[str, _Study] = {}
        drops: list[Drop] = []
        work = self._work_dir() if self.deidentifier is not None else None
        for label, read, member in self._entries():
            data = read()
            if is_plain_image(data[:8]):
                drops.append(Drop(self.name, "not DICOM"))
                continue
            try:
                with quiet_pydicom():  # pydicom's warnings can quote header values
                    ds = dcmread(io.BytesIO(data), force=False)
            except (InvalidDicomError, ValueError, TypeError, EOFError, OSError, AttributeError, KeyError):
                drops.append(Drop(self.name, "not DICOM"))
                continue
            key = str(ds.get("StudyInstanceUID", "") or "").strip()
            if not key:
                drops.append(Drop(self.name, "unreadable image"))
                continue
            study = studies.setdefault(key, _Study(key))
            study.accession = study.accession or str(ds.get("AccessionNumber", "") or "").strip()
            if study.refused:
                continue
            if self.deidentifier is not None:
                assert work is not None
                study.phi |= _phi_values(ds)
                try:
                    result = self.deidentifier.deidentify_dataset(ds, name=f"file in study {len(studies)}")
                except RadlvlmError:
                    study.refused = "de-identification failed"
                    continue
                out = result.dataset
                study.date_offset = result.date_offset_days
                parts = [str(out.get(k, "") or "") for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
                target = work.joinpath(*parts[:2], f"{parts[2]}.dcm")
                target.parent.mkdir(parents=True, exist_ok=True)
                out.save_as(target, enforce_file_format=True)
                ref = ImageRef(str(target), f"{self.name}/{parts[2]}")
                ds = out
            elif not is_deidentified(ds):
                study.refused = "not de-identified"
                continue
            else:
                sop = str(ds.get("SOPInstanceUID", "") or "")
                ref = ImageRef(str(self.images if member else label), f"{self.name}/{sop}", member)
            try:
                source = ref.path if self.deidentifier is not None else io.BytesIO(data)
                image = read_image_file(source, name=ref.image_id)
            except RadlvlmError:
                study.refused = "unreadable image"
                continue
            study.study_id = study.study_id or image.study_instance_uid
            study.patient = study.patient or str(ds.get("PatientID", "") or "").strip()
            study.images.append((image.view, ref, image.instance_number or 0, image.sop_instance_uid))
            del image
        return studies, drops

    def _work_dir(self) -> Path:
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="radlvlm-deid-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return self.work_dir

    # -------------------------------------------------------------- records
    def records(self) -> Iterator[Item]:
        """Scan, de-identify and match once per source object (later calls replay the result, no pixels held)."""
        if self._cache is None:
            self._cache = list(self._records())
        yield from self._cache

    def _records(self) -> Iterator[Item]:
        if self._report_rows is None:
            self.validate()
        assert self._report_rows is not None
        studies, drops = self._scan()
        yield from drops
        by_key: dict[str, _Study] = {}
        for study in studies.values():
            match = study.key if self._key_column == "study_instance_uid" else study.accession
            if match:
                by_key[match] = study
        matched: set[str] = set()
        pending: list[tuple[_Study, dict[str, Any], int]] = []
        for line_no, row in self._report_rows:
            study = by_key.get(str(row[self._key_column]).strip())
            if study is None:
                yield Drop(self.name, "image missing", _row_split(row))
                continue
            matched.add(study.key)
            pending.append((study, row, line_no))
        for study in studies.values():
            if study.key not in matched:
                yield Drop(self.name, "no report" if not study.refused else study.refused)
        splits: dict[str, tuple[str, int]] = {}
        for study, row, line_no in pending:
            if study.refused:
                yield Drop(self.name, study.refused, _row_split(row))
                continue
            patient = study.patient or study.study_id
            split = _row_split(row) or assign_split(patient, self.split_fractions)
            if patient in splits and splits[patient][0] != split:
                raise InputError(f"{self.reports}: lines {splits[patient][1]} and {line_no}: one patient in two splits")
            splits.setdefault(patient, (split, line_no))
            frontal = [i for i in study.images if i[0].is_frontal]
            unknown = [i for i in study.images if not i[0].is_frontal and not i[0].is_lateral]
            chosen = sorted(frontal or unknown, key=lambda i: (i[2], i[3]))
            if not chosen:
                yield Drop(self.name, "lateral only", split)
                continue
            report = str(row.get("report") or "")
            if not report.strip():
                yield Drop(self.name, "empty report", split)
                continue
            clean = self.report_deidentifier.deidentify(report, self.pseudonyms, date_offset_days=study.date_offset)
            indication = str(row.get("indication") or "")
            if indication.strip():
                indication = self.report_deidentifier.deidentify(
                    indication, self.pseudonyms, date_offset_days=study.date_offset
                ).text
            if _leaks(clean.text + " " + indication, study.phi):
                yield Drop(self.name, "de-identification failed", split)
                continue
            sections = parse_report(clean.text)
            findings, impression = _text(sections.findings), _text(sections.impression)
            if not findings:
                yield Drop(self.name, "no findings", split)
                continue
            if not frontal:
                yield Note(self.name, "view unknown", split)
            yield Record(
                study_id=study.study_id,
                patient_id=patient,
                split=split,
                source=self.name,
                findings=findings,
                impression=impression,
                indication=_text(indication or sections.indication),
                image=chosen[0][1],
            )


def _zip_reader(archive: Path, member: str) -> Callable[[], bytes]:
    def read() -> bytes:
        with zipfile.ZipFile(archive) as handle:
            return handle.read(member)

    return read


def _row_split(row: Mapping[str, Any]) -> str | None:
    value = row.get("split")
    return str(value) if value in SPLITS else None


_TOKEN = re.compile(r"[A-Za-z0-9]+")


def _phi_values(ds: Any) -> set[str]:
    """Identifying values of a header, as normalised tokens (name parts of 3+ letters, whole IDs and dates)."""
    values: set[str] = set()
    for keyword in _PHI_NAMES + _PHI_IDS:
        raw = ds.get(keyword)
        if raw is None or str(raw).strip() == "":
            continue
        text = str(raw)
        if keyword in _PHI_NAMES:
            values |= {t.upper() for t in _TOKEN.findall(text) if len(t) >= 3 and t.isalpha()}
        else:
            normalised = "".join(_TOKEN.findall(text)).upper()
            if len(normalised) >= 4:
                values.add(normalised)
    return values


def _leaks(text: str, phi: set[str]) -> bool:
    if not phi:
        return False
    words = {t.upper() for t in _TOKEN.findall(text)}
    squashed = "".join(_TOKEN.findall(text)).upper()
    return any(value in words or (len(value) >= 6 and value in squashed) for value in phi)


# --------------------------------------------------------------------------------------------- from a recipe
_SPEC_KEYS: dict[str, set[str]] = {
    "iu_xray": {"root", "image_root", "limit", "name"},
    "covid": {"manifest", "limit", "name"},
    "nih_cxr14": {"manifest", "limit", "templated", "name"},
    "hospital": {
        "images",
        "reports",
        "deidentify",
        "key_file",
        "work_dir",
        "split_fractions",
        "spacy_model",
        "name",
    },
    "pseudo_pairs": {"images", "reports", "k", "seed", "name"},
}
_SPEC_REQUIRED: dict[str, set[str]] = {
    "iu_xray": {"root"},
    "covid": {"manifest"},
    "nih_cxr14": {"manifest"},
    "hospital": {"images", "reports"},
    "pseudo_pairs": {"images", "reports"},
}


def sources_from_config(specs: Iterable[Mapping[str, Any]], *, base: str | Path | None = None) -> list[Source]:
    """Build sources from a recipe's list of mappings, each with a ``type`` (or ``kind``) and its arguments.

    Types and keys (relative paths are taken from ``base``):

    * ``iu_xray``: ``root``, ``image_root``, ``limit``, ``name``
    * ``covid``: ``manifest``, ``limit``, ``name``
    * ``nih_cxr14``: ``manifest``, ``limit``, ``templated``, ``name``
    * ``hospital``: ``images``, ``reports``, ``deidentify`` (bool: de-identify on the way in), ``key_file``
      (the project key, needed with ``deidentify``; created when absent), ``work_dir``, ``split_fractions``,
      ``spacy_model`` (an installed spaCy package for report NER), ``name``
    * ``pseudo_pairs``: ``images`` and ``reports`` (the *names* of an ``nih_cxr14`` and an ``iu_xray`` source
      listed before it), ``k``, ``seed``, ``name``

    Raises:
        InputError: an unknown type or key, a missing key, or a pseudo-pair naming no earlier source, naming
            the entry's position.
    """
    from radlvlm.training.pseudo_pairs import LabelMatchedPairs

    root = Path(base) if base is not None else None

    def path(value: object) -> Path:
        candidate = Path(str(value))
        return candidate if candidate.is_absolute() or root is None else root / candidate

    built: list[Source] = []
    for position, spec in enumerate(specs, start=1):
        if not isinstance(spec, Mapping):
            raise InputError(f"data source {position}: expected a mapping with a 'type'")
        kind = spec.get("type", spec.get("kind"))
        if kind not in _SPEC_KEYS:
            raise InputError(f"data source {position}: unknown type {kind!r}; known: {sorted(_SPEC_KEYS)}")
        options = {k: v for k, v in spec.items() if k not in ("type", "kind")}
        unknown = sorted(set(options) - _SPEC_KEYS[kind])
        if unknown:
            raise InputError(f"data source {position} ({kind}): unknown key(s) {unknown}")
        missing = sorted(_SPEC_REQUIRED[kind] - set(options))
        if missing:
            raise InputError(f"data source {position} ({kind}): missing key(s) {missing}")
        named = {k: options[k] for k in ("name", "limit") if k in options}
        if kind == "iu_xray":
            image_root = path(options["image_root"]) if options.get("image_root") else None
            built.append(IUXraySource(path(options["root"]), image_root=image_root, **named))
        elif kind == "covid":
            built.append(CovidSource(path(options["manifest"]), **named))
        elif kind == "nih_cxr14":
            built.append(NIHSource(path(options["manifest"]), templated=bool(options.get("templated", True)), **named))
        elif kind == "hospital":
            built.append(_hospital_from_config(options, path, position))
        else:
            by_name = {source.name: source for source in built}
            images, reports = by_name.get(str(options["images"])), by_name.get(str(options["reports"]))
            if not isinstance(images, NIHSource) or not isinstance(reports, IUXraySource):
                raise InputError(
                    f"data source {position} (pseudo_pairs): 'images' must name an nih_cxr14 source and 'reports' "
                    "an iu_xray source listed before it"
                )
            extra = {k: options[k] for k in ("k", "seed", "name") if k in options}
            built.append(LabelMatchedPairs(images, reports, **extra))
    return built


def _hospital_from_config(options: Mapping[str, Any], path: Callable[[object], Path], position: int) -> HospitalSource:
    deidentifier = None
    report_deidentifier = None
    spacy_model = options.get("spacy_model")
    if spacy_model is not None:
        from radlvlm.safety.text_deid import ReportDeidentifier, TextDeidConfig

        report_deidentifier = ReportDeidentifier(TextDeidConfig(spacy_model=str(spacy_model)))
    if options.get("deidentify"):
        if not options.get("key_file"):
            raise InputError(f"data source {position} (hospital): 'deidentify' needs a 'key_file' (the project key)")
        from radlvlm.safety.dicom_deid import DicomDeidentifier
        from radlvlm.safety.pseudonyms import PseudonymMap, load_or_create_key

        key, _ = load_or_create_key(path(options["key_file"]))
        deidentifier = DicomDeidentifier(PseudonymMap(key, record=False), text=report_deidentifier)
    return HospitalSource(
        path(options["images"]),
        path(options["reports"]),
        deidentifier=deidentifier,
        work_dir=path(options["work_dir"]) if options.get("work_dir") else None,
        report_deidentifier=report_deidentifier,
        split_fractions=options.get("split_fractions"),
        **({"name": options["name"]} if "name" in options else {}),
    )
