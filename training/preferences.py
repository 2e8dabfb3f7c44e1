"""Preference pairs for DPO safety alignment: the reference report (chosen) against a worse answer (rejected).

For every drafting study of a split (a record with an image and a report, from the same sources and the same
splits as stages 1 and 2), with ``chosen`` = the de-identified reference ``FINDINGS: … IMPRESSION: …``:

* ``injected_error`` — the reference with one injected error (:func:`radlvlm.tasks.inject_error`) that the
  offline CheXprompt-like judge counts as clinically significant (categories tried in a seeded order);
* ``model_sample`` — the stage-2 model's own sampled draft, kept when the offline judge finds at least
  ``min_errors`` errors in it against the reference (only when a model is given; batched, seeded, cached);
* ``identifier`` — the reference with a made-up identifier sentence (a fictional name, record number,
  accession number or date with the cue words reports use: "Discussed with Dr. …", "MRN: …");
* ``unsupported_comparison`` — the reference with a comparison to a prior study ("Compared with the prior
  study, …"), only where the reference itself does not compare (the request carries no prior);
* ``false_abstention`` — the reference against the abstention message, for as many studies as there are
  out-of-scope pairs, so that learning to abstain does not turn into abstaining on chest radiographs.
* ``error_check`` — error-check prompts (text-only, from the check sources' reports: each study as written and
  with one injected error, :func:`radlvlm.tasks.build_errorcheck_training_set`): the right SIMPLE answer
  against the wrong one, and the right COMPLEX JSON against a wrong verdict, so that aligning the drafts does
  not cost the checks (``error_check_studies`` studies per split).

And ``out_of_scope`` pairs: real images the model is not for — CT, MR, ultrasound, nuclear medicine and a
non-chest radiograph from pydicom's test files (pydicom-data where installed) and the two photographs shipped
with scikit-learn — with ``chosen`` = :data:`radlvlm.tasks.drafting.ABSTENTION_MESSAGE` and ``rejected`` = a
reference report of the same split. Each image family (one acquisition, in all its encodings and frames) is in
exactly one split (:data:`OUT_OF_SCOPE_IMAGES`); training pairs use seeded crops and mirror images of it.

Splits: pairs of a split come only from that split's records; a patient, study or out-of-scope image family in
two splits raises :class:`~radlvlm.errors.InputError` (:func:`check_no_leakage`). Everything is seeded: the same
sources, settings and seed give the same pairs, byte for byte. :func:`write_preferences` writes
``{split}.jsonl`` and ``counts.json`` (pairs per split, kind and source, and what was left out and why).
Logs carry counts only, never report text. Pair files hold de-identified report text and each image's local
path (training reads the image from it), so they stay with the data; a hospital source de-identifying on the way
in should name a ``work_dir``, whose copies are named by their new UIDs and outlive the build.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import sys
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import sklearn.datasets
import torch
from pydicom.data import get_testdata_file
from tqdm.auto import tqdm

from radlvlm.clinical_eval.judges import StructuredJudge
from radlvlm.errors import InputError
from radlvlm.imaging import read_image_file
from radlvlm.model.generation import GenerationSettings, generate
from radlvlm.reports.labeler import label_report
from radlvlm.safety.guardrails import claims_prior
from radlvlm.tasks import applicable_edits, inject_error, sentence_spans
from radlvlm.tasks.drafting import ABSTENTION_MESSAGE, draft_prompt, draft_target
from radlvlm.tasks.errorcheck import build_errorcheck_training_set, errorcheck_prompt
from radlvlm.tasks.taxonomy import ErrorCategory
from radlvlm.training.data import SplitRegistry
from radlvlm.training.sources import SPLITS, Drop, Note, Record, Source

__all__ = [
    "IN_SCOPE_KINDS",
    "OUT_OF_SCOPE_IMAGES",
    "PAIR_KINDS",
    "ImageView",
    "ModelSampleSettings",
    "OutOfScopeImage",
    "PreferencePair",
    "PreferenceSet",
    "PreferenceSettings",
    "build_preferences",
    "check_no_leakage",
    "collect_drafting_records",
    "out_of_scope_views",
    "read_preferences",
    "write_preferences",
]

logger = logging.getLogger(__name__)

IN_SCOPE_KINDS: tuple[str, ...] = (
    "injected_error",
    "model_sample",
    "identifier",
    "unsupported_comparison",
    "false_abstention",
    "error_check",
)
PAIR_KINDS: tuple[str, ...] = (*IN_SCOPE_KINDS, "out_of_scope")
COUNTS_FILE = "counts.json"
OUT_OF_SCOPE_SOURCE = "out_of_scope"


def _rank(*parts: object) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:16], 16)


def _rng(*parts: object) -> random.Random:
    return random.Random(_rank(*parts))


# --------------------------------------------------------------------------------------------- pairs
@dataclass(frozen=True)
class ImageView:
    """An image read lazily: one frame of a file, optionally cropped and mirrored (augmented views).

    Args:
        path (`str`): the file, or the zip archive holding it.
        image_id (`str`): a PHI-free name (public relative path, de-identified UID, or ``out_of_scope/<file>``).
        member (`str | None`, defaults to `None`): the member inside the zip at ``path``.
        frame (`int | None`, defaults to `None`): the frame of a multi-frame DICOM.
        crop (`tuple[float, float, float, float] | None`, defaults to `None`): top, left, height, width as
            fractions of the image.
        flip (`bool`, defaults to `False`): mirror left-right (after cropping).
    """

    path: str
    image_id: str
    member: str | None = None
    frame: int | None = None
    crop: tuple[float, float, float, float] | None = None
    flip: bool = False

    def load(self) -> torch.Tensor:
        """Display pixels ``(rows, columns)``, float32 in [0, 1]."""
        try:
            if self.member is None:
                pixels = read_image_file(self.path, name=self.image_id, frame=self.frame).pixels
            else:
                with zipfile.ZipFile(self.path) as archive:
                    data = archive.read(self.member)
                pixels = read_image_file(io.BytesIO(data), name=self.image_id, frame=self.frame).pixels
        except (OSError, KeyError, zipfile.BadZipFile) as e:
            raise InputError(f"image {self.image_id}: cannot be read ({type(e).__name__})") from e
        if self.crop is not None:
            rows, columns = pixels.shape
            top, left, height, width = self.crop
            r0, c0 = int(top * rows), int(left * columns)
            pixels = pixels[r0 : r0 + max(1, int(height * rows)), c0 : c0 + max(1, int(width * columns))]
        if self.flip:
            pixels = pixels.flip(-1)
        return pixels.contiguous()

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["crop"] = list(self.crop) if self.crop is not None else None
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ImageView:
        crop = values.get("crop")
        return cls(
            path=str(values["path"]),
            image_id=str(values["image_id"]),
            member=values.get("member"),
            frame=values.get("frame"),
            crop=tuple(float(v) for v in crop) if crop is not None else None,  # type: ignore[arg-type]
            flip=bool(values.get("flip", False)),
        )


@dataclass(frozen=True)
class PreferencePair:
    """One DPO pair: a drafting prompt (image + indication), a preferred and a dispreferred answer.

    Args:
        pair_id (`str`): unique and stable (``<study>:<kind>``, or ``<family>:<n>`` out of scope).
        study_id (`str`): the pseudonymous study (or the out-of-scope image family).
        patient_id (`str`): the pseudonymous patient the split is keyed on.
        split (`str`): ``train``, ``validation`` or ``test``.
        source (`str`): the data source's name (``iu_xray``, ``pseudo_pair``, ``hospital``, ``out_of_scope`` …).
        kind (`str`): one of :data:`PAIR_KINDS` (what makes ``rejected`` worse).
        chosen (`str`): the preferred answer.
        rejected (`str`): the dispreferred answer.
        image (`ImageView | None`): the image of the prompt.
        indication (`str`, defaults to `""`): the clinical indication in the prompt.
        task (`str`, defaults to `"draft"`): the task whose prompt is asked: ``draft``, ``check_simple`` or
            ``check_complex``.
        report (`str`, defaults to `""`): the report an error-check prompt asks about.
        meta (`Mapping[str, Any]`, defaults to `{}`): PHI-free facts (error category, judge counts …).
    """

    pair_id: str
    study_id: str
    patient_id: str
    split: str
    source: str
    kind: str
    chosen: str
    rejected: str
    image: ImageView | None
    indication: str = ""
    task: str = "draft"
    report: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def instruction(self) -> str:
        """The user instruction (no chat template, no ``<image>``), exactly as stage 2 asked it."""
        if self.task in ("check_simple", "check_complex"):
            return errorcheck_prompt(self.task.removeprefix("check_"), self.report)
        if self.task != "draft":
            raise InputError(
                f"pair {self.pair_id}: task {self.task!r} has no prompt (draft, check_simple, check_complex)"
            )
        return draft_prompt(self.indication or None)

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["image"] = self.image.to_dict() if self.image is not None else None
        values["meta"] = dict(self.meta)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PreferencePair:
        known = {f.name for f in fields(cls)}
        missing = sorted({"pair_id", "split", "kind", "chosen", "rejected"} - set(values))
        unknown = sorted(set(values) - known)
        if missing or unknown:
            raise InputError(f"preference pair: missing key(s) {missing}, unknown key(s) {unknown}")
        image = values.get("image")
        return cls(
            **{k: values[k] for k in known if k in values and k not in ("image", "meta")},
            image=ImageView.from_dict(image) if image is not None else None,
            meta=dict(values.get("meta") or {}),
        )


# --------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class ModelSampleSettings:
    """How the stage-2 model's own drafts are drawn for ``model_sample`` pairs.

    Args:
        max_studies (`int | None`, defaults to `None`): studies sampled per split (the first by a seeded order).
        batch_size (`int`, defaults to `8`): drafts generated together (fixed batches: results do not depend
            on where an interrupted run resumed).
        max_new_tokens (`int`, defaults to `192`): cap per draft.
        temperature (`float`, defaults to `1.0`) and top_p (`float`, defaults to `0.95`): sampling.
        min_errors (`int`, defaults to `1`): errors the offline judge must find against the reference to keep
            a sample (the reference scores 0 against itself, so this is "worse than the reference").
    """

    max_studies: int | None = None
    batch_size: int = 8
    max_new_tokens: int = 192
    temperature: float = 1.0
    top_p: float = 0.95
    min_errors: int = 1

    def __post_init__(self) -> None:
        _positive_or_none("model_samples.max_studies", self.max_studies)
        for name in ("batch_size", "max_new_tokens", "min_errors"):
            _positive_or_none(f"model_samples.{name}", getattr(self, name), allow_none=False)
        if not _number(self.temperature) or self.temperature <= 0:
            raise InputError(f"model_samples.temperature must be > 0, got {self.temperature!r}")
        if not _number(self.top_p) or not 0 < self.top_p <= 1:
            raise InputError(f"model_samples.top_p must be in (0, 1], got {self.top_p!r}")


@dataclass(frozen=True)
class PreferenceSettings:
    """What the preference builder makes (a recipe's ``data.preferences`` section, minus ``dir``).

    Args:
        kinds (`tuple[str, ...]`, defaults to all of :data:`PAIR_KINDS`): the kinds of pairs to build.
        splits (`tuple[str, ...]`, defaults to `("train", "validation")`): the splits to build.
        max_studies (`int | None`, defaults to `None`): drafting studies per split (seeded choice).
        out_of_scope_per_image (`int`, defaults to `8`): pairs per out-of-scope image family and split
            (training views after the first are seeded crops / mirror images; each pair has another report).
        model_samples (`ModelSampleSettings | None`, defaults to `ModelSampleSettings()`): None turns
            ``model_sample`` pairs off.
        with_indication (`bool`, defaults to `True`): put the study's indication into the prompt, as stage 2 did.
        error_check_studies (`int | None`, defaults to `400`): report studies per split for ``error_check`` pairs
            (four pairs each: SIMPLE and COMPLEX, as written and with an error); None takes all.
    """

    kinds: tuple[str, ...] = PAIR_KINDS
    splits: tuple[str, ...] = ("train", "validation")
    max_studies: int | None = None
    out_of_scope_per_image: int = 8
    model_samples: ModelSampleSettings | None = field(default_factory=ModelSampleSettings)
    with_indication: bool = True
    error_check_studies: int | None = 400

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", tuple(self.kinds))
        object.__setattr__(self, "splits", tuple(self.splits))
        unknown = sorted(set(self.kinds) - set(PAIR_KINDS))
        if unknown or not self.kinds:
            raise InputError(f"preferences.kinds must be a non-empty subset of {list(PAIR_KINDS)}; unknown: {unknown}")
        bad = sorted(set(self.splits) - set(SPLITS))
        if bad or not self.splits:
            raise InputError(f"preferences.splits must be a non-empty subset of {list(SPLITS)}; unknown: {bad}")
        _positive_or_none("preferences.max_studies", self.max_studies)
        _positive_or_none("preferences.out_of_scope_per_image", self.out_of_scope_per_image, allow_none=False)
        _positive_or_none("preferences.error_check_studies", self.error_check_studies)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> PreferenceSettings:
        """From a recipe mapping; unknown keys raise naming them (``dir`` is the recipe's, not ours)."""
        values = {k: v for k, v in dict(values or {}).items() if k != "dir"}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"data.preferences: unknown key(s) {unknown}; known: {sorted(known | {'dir'})}")
        samples = values.pop("model_samples", {})
        if samples is False or samples is None:
            sample_settings = None
        elif isinstance(samples, Mapping):
            sample_known = {f.name for f in fields(ModelSampleSettings)}
            bad = sorted(set(samples) - sample_known)
            if bad:
                raise InputError(f"data.preferences.model_samples: unknown key(s) {bad}; known: {sorted(sample_known)}")
            sample_settings = ModelSampleSettings(**dict(samples))
        else:
            raise InputError("data.preferences.model_samples must be a mapping of settings, or false")
        if "model_sample" not in values.get("kinds", PAIR_KINDS):
            sample_settings = None
        try:
            return cls(**values, model_samples=sample_settings)
        except TypeError as e:
            raise InputError(f"data.preferences: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["kinds"], values["splits"] = list(self.kinds), list(self.splits)
        return values


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_or_none(name: str, value: object, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name} must be a positive integer{' or null' if allow_none else ''}, got {value!r}")


# --------------------------------------------------------------------------------------------- out of scope
@dataclass(frozen=True)
class OutOfScopeImage:
    """A family of real images the model is not for: one acquisition, possibly several files or frames.

    Args:
        family (`str`): the family name (its pairs' study and patient id).
        split (`str`): the one split its pairs belong to.
        what (`str`): modality / body part, for the counts.
        files (`tuple[str, ...]`): pydicom test file names, or ``sklearn:<name>.jpg``.
        frames (`int`, defaults to `1`): frames per file (multi-frame DICOM).
    """

    family: str
    split: str
    what: str
    files: tuple[str, ...]
    frames: int = 1


# Families checked for near-duplicates (US1_UNCR and examples_rgb_color are one image; examples_overlay is a crop
# of MR-SIEMENS-DICOM-WithOverlays), which are kept in one split. The bundled files (pydicom itself, scikit-learn)
# give both splits some images when pydicom-data is not installed.
OUT_OF_SCOPE_IMAGES: tuple[OutOfScopeImage, ...] = (
    OutOfScopeImage("ct-693", "train", "CT", ("693_UNCR.dcm",)),
    OutOfScopeImage("ct-head", "train", "CT head", ("J2K_pixelrep_mismatch.dcm",)),
    OutOfScopeImage("ct-neck", "train", "CT neck", ("bad_sequence.dcm",)),
    OutOfScopeImage("ct-pancreas", "train", "CT abdomen", ("explicit_VR-UN.dcm",)),
    OutOfScopeImage("mr-2", "train", "MR", ("MR2_UNCR.dcm",)),
    OutOfScopeImage("mr-abdomen", "train", "MR abdomen", ("examples_overlay.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm")),
    OutOfScopeImage("mr-head-enhanced", "train", "MR head", ("emri_small.dcm",), frames=10),
    OutOfScopeImage("us-ob", "train", "US", ("OBXXXX1A.dcm",)),
    OutOfScopeImage("us-aloka", "train", "US", ("gdcm-US-ALOKA-16.dcm",)),
    OutOfScopeImage("nm-whole-body", "train", "NM whole body", ("JPEG2000_UNC.dcm",)),
    OutOfScopeImage("cr-extremity", "train", "CR extremity", ("RG3_UNCR.dcm",)),
    OutOfScopeImage("photo-china", "train", "photograph", ("sklearn:china.jpg",)),
    OutOfScopeImage("ct-small", "validation", "CT", ("CT_small.dcm",)),
    OutOfScopeImage("mr-small", "validation", "MR", ("MR_small.dcm",)),
    OutOfScopeImage("us-1", "validation", "US", ("US1_UNCR.dcm", "examples_rgb_color.dcm")),
    OutOfScopeImage("us-palette", "validation", "US", ("examples_palette.dcm",)),
    OutOfScopeImage("us-mono", "validation", "US", ("JPGLosslessP14SV1_1s_1f_8b.dcm",)),
    OutOfScopeImage("photo-flower", "validation", "photograph", ("sklearn:flower.jpg",)),
)


def _locate(name: str) -> Path | None:
    """The local path of a pydicom test file or a scikit-learn sample image; None when not installed."""
    if name.startswith("sklearn:"):
        path = Path(sklearn.datasets.__file__).parent / "images" / name.split(":", 1)[1]
        return path if path.is_file() else None

    try:
        found = get_testdata_file(name, download=False)
    except Exception:  # pydicom signals a missing optional data package in several ways
        return None
    return Path(str(found)) if found else None


def out_of_scope_views(
    split: str, per_image: int, *, seed: int, augment: bool = True
) -> tuple[list[tuple[OutOfScopeImage, ImageView]], Counter[str]]:
    """``per_image`` views of each out-of-scope family of ``split`` (and families whose files are absent).

    View 0 of a family is its first file, whole; further views cycle through its files and frames, with a
    seeded crop (60-100% of each side) and mirror image when ``augment``.
    """
    views: list[tuple[OutOfScopeImage, ImageView]] = []
    missing: Counter[str] = Counter()
    for image in OUT_OF_SCOPE_IMAGES:
        if image.split != split:
            continue
        files = [(name, _locate(name)) for name in image.files]
        present = [(name, path) for name, path in files if path is not None]
        if not present:
            missing["file not installed (pydicom-data)"] += 1
            continue
        slots = [(name, path, frame) for name, path in present for frame in range(image.frames)]
        for n in range(per_image):
            name, path, frame = slots[n % len(slots)]
            crop, flip = None, False
            if augment and n > 0:
                rng = _rng(seed, "oos-view", image.family, n)
                height, width = rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)
                crop = (round(rng.uniform(0, 1 - height), 4), round(rng.uniform(0, 1 - width), 4))
                crop = (*crop, round(height, 4), round(width, 4))
                flip = rng.random() < 0.5
            view = ImageView(
                str(path),
                f"{OUT_OF_SCOPE_SOURCE}/{name.removeprefix('sklearn:')}",
                frame=frame if image.frames > 1 else None,
                crop=crop,  # type: ignore[arg-type]
                flip=flip,
            )
            views.append((image, view))
    return views, missing


# --------------------------------------------------------------------------------------------- rejects
# Fictional identifiers (no real person): name parts from many languages, so the model cannot learn one style.
_FIRST = (
    "Maren", "Tomas", "Priya", "Kwabena", "Ingrid", "Mateo", "Yuki", "Oluwaseun", "Fatima", "Declan",
    "Anouk", "Ravi", "Beatriz", "Nikolai", "Amara", "Soren", "Leilani", "Farid", "Greta", "Jun",
)  # fmt: skip
_LAST = (
    "Okafor", "Lindqvist", "Raman", "Mensah", "Haugen", "Alvarado", "Tanaka", "Adeyemi", "Haddad", "Brennan",
    "Verhoeven", "Iyer", "Castellano", "Volkov", "Nwosu", "Kjeldsen", "Kahale", "Rahimi", "Schreiber", "Takeda",
)  # fmt: skip
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")  # fmt: skip
# Each template carries the cue words the report de-identifier (and so the output guardrail) keys on.
_IDENTIFIER_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("person_date", "Discussed with Dr. {first} {last} on {date}."),
    ("person_time", "Findings were communicated to Dr. {first} {last} at {time}."),
    ("mrn", "MRN: {mrn}."),
    ("mrn", "Medical record number {mrn}."),
    ("accession", "Accession number {acc}."),
    ("person_mrn", "Patient {first} {last}, MRN {mrn}."),
    ("signature", "Electronically signed by {first} {last}, MD on {date}."),
    ("date", "Exam date {date}."),
)
_COMPARISON_SENTENCES: tuple[str, ...] = (
    "Compared with the prior study, the findings are unchanged.",
    "Unchanged compared with the previous radiograph.",
    "No significant interval change since the prior examination.",
    "The cardiomediastinal silhouette is stable compared with the prior study.",
    "Compared to the previous radiograph, there has been interval improvement.",
)


def _fake_values(rng: random.Random) -> dict[str, str]:
    year, month, day = rng.randint(2004, 2023), rng.randint(1, 12), rng.randint(1, 28)
    date = rng.choice(
        (f"{month:02d}/{day:02d}/{year}", f"{year}-{month:02d}-{day:02d}", f"{_MONTHS[month - 1]} {day}, {year}")
    )
    return {
        "first": rng.choice(_FIRST),
        "last": rng.choice(_LAST),
        "date": date,
        "time": f"{rng.randint(1, 12)}:{rng.randint(0, 59):02d} {rng.choice(('AM', 'PM'))}",
        "mrn": str(rng.randint(10**6, 10**8 - 1)),
        "acc": f"{rng.choice('ACRX')}{rng.randint(10**6, 10**7 - 1)}",
    }


def _insert_sentence(text: str, sentence: str, rng: random.Random) -> str:
    """``sentence`` after a seeded sentence end of ``text`` (never inside a sentence or a header)."""
    ends = [end for _, end in sentence_spans(text)] or [len(text)]
    point = rng.choice(ends)
    return f"{text[:point]} {sentence}{text[point:]}"


def identifier_reject(reference: str, *, seed: int) -> tuple[str, dict[str, str]]:
    """The reference with one fictional identifier sentence; meta names the identifier type only."""
    rng = random.Random(seed)
    kind, template = rng.choice(_IDENTIFIER_TEMPLATES)
    return _insert_sentence(reference, template.format(**_fake_values(rng)), rng), {"identifier": kind}


def reference_compares(reference: str) -> bool:
    """True when the reference itself compares with a prior (then an added comparison is not unsupported)."""
    return claims_prior(reference) or bool(label_report(reference).comparison_sentences)


def comparison_reject(reference: str, *, seed: int) -> str:
    rng = random.Random(seed)
    return _insert_sentence(reference, rng.choice(_COMPARISON_SENTENCES), rng)


def injected_error_reject(reference: str, *, seed: int, judge: Any) -> tuple[str, dict[str, Any]] | None:
    """The reference with one clinically significant injected error (per ``judge``), or None if none fits."""
    options = applicable_edits(reference)
    _rng(seed, "order").shuffle(options)
    for category, edit in options:
        corrupted, record = inject_error(reference, category, edit, seed=seed)
        verdict = judge.judge(corrupted, reference)
        if verdict.count(significant=True) > 0:
            return corrupted, {
                "category": record.category.value,
                "edit": record.edit.value,
                "significant_errors": verdict.count(significant=True),
            }
    return None


# --------------------------------------------------------------------------------------------- records
def collect_drafting_records(
    sources: Iterable[Source], splits: Sequence[str], *, checks: dict[str, list[Record]] | None = None
) -> tuple[dict[str, list[Record]], dict[str, dict[str, Any]]]:
    """Every drafting record (image + report) of ``splits``, after checking that no patient or study of any
    source sits in two splits; and per-source counts (records per split, drops by reason). Records that serve
    error checking (a report, image or not) go into ``checks`` by split when it is given."""
    checks = checks if checks is not None else {}
    sources = list(sources)
    names = [s.name for s in sources]
    if not sources or len(set(names)) != len(names):
        raise InputError(f"preferences need at least one source with unique names, got {names}")
    for source in sources:
        source.validate()
    by_split: dict[str, list[Record]] = {split: [] for split in splits}
    counts: dict[str, dict[str, Any]] = {}
    splits = SplitRegistry()
    for source in sources:
        entry: dict[str, Any] = {
            "drafting": Counter(),
            "checking": Counter(),
            "no_image_or_report": Counter(),
            "dropped": Counter(),
        }
        for item in source.records():
            if isinstance(item, Drop):
                entry["dropped"][item.reason] += 1
                continue
            if isinstance(item, Note):
                continue
            splits.check(item)
            if item.tasks & {"check_simple", "check_complex"} and (item.findings or item.impression):
                entry["checking"][item.split] += 1
                if item.split in checks:
                    checks[item.split].append(item)
            usable = "draft" in item.tasks and item.image is not None and bool(item.findings or item.impression)
            if not usable:
                entry["no_image_or_report"][item.split] += 1
                continue
            entry["drafting"][item.split] += 1
            if item.split in by_split:
                by_split[item.split].append(item)
        counts[source.name] = {key: dict(sorted(value.items())) for key, value in entry.items()}
    return by_split, counts


# --------------------------------------------------------------------------------------------- building
@dataclass
class PreferenceSet:
    """The pairs of each split and the counts written beside them."""

    pairs: dict[str, list[PreferencePair]]
    counts: dict[str, Any]


SampleFn = Callable[[str, list[tuple[str, str, Any]], int], list[str]]


def build_preferences(
    sources: Iterable[Source],
    settings: PreferenceSettings,
    *,
    seed: int = 0,
    sampler: SampleFn | None = None,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> PreferenceSet:
    """Build the pairs of every split in ``settings.splits`` (see the module docstring).

    Args:
        sources: the training sources (the same as stage 2's, so splits agree).
        settings: what to build.
        seed: seeds every choice (studies, injected errors, identifiers, views, samples).
        sampler: ``sampler(split, [(study_id, prompt instruction, image), ...], batch_seed) -> drafts``; when None,
            ``model_sample`` pairs are skipped (counted). :func:`model_sampler` makes one from a model.
        cache_dir: where sampled drafts are kept batch by batch, so an interrupted build resumes.
        progress: a progress bar (stderr) over sampling batches.

    Raises:
        InputError: a source problem, a patient or study in two splits, or no drafting study in a split.
    """
    check_records: dict[str, list[Record]] = {split: [] for split in settings.splits}
    records, source_counts = collect_drafting_records(sources, settings.splits, checks=check_records)
    judge = StructuredJudge()
    sampling = _Sampling(sampler, cache_dir, progress)
    pairs: dict[str, list[PreferencePair]] = {}
    split_counts: dict[str, Any] = {}
    for split in settings.splits:
        pool = sorted(records[split], key=lambda r: _rank(seed, "study", r.source, r.study_id))
        if not pool:
            raise InputError(f"no drafting study (image + report) in split {split!r}: nothing to pair")
        studies = pool[: settings.max_studies] if settings.max_studies else pool
        built = _split_pairs(split, pool, studies, check_records[split], settings, judge, seed, sampling)
        built.pairs.sort(key=lambda p: _rank(seed, "order", split, p.pair_id))
        pairs[split] = built.pairs
        split_counts[split] = _split_counts(built.pairs, len(studies), len(pool), built.dropped)
        logger.info("preferences %s: %d pairs from %d studies", split, len(built.pairs), len(studies))
    check_no_leakage(pairs)
    counts = {
        "seed": seed,
        "settings": settings.to_dict(),
        "sources": source_counts,
        "splits": split_counts,
        "total_pairs": sum(len(v) for v in pairs.values()),
    }
    return PreferenceSet(pairs, counts)


@dataclass(frozen=True)
class _Sampling:
    """How ``model_sample`` drafts are drawn: the sampler (None: no model given), its cache and progress bar."""

    sampler: SampleFn | None
    cache_dir: Path | None
    progress: bool


@dataclass
class _SplitPairs:
    """The pairs of one split as they are built, and per kind what was left out and why."""

    split: str
    with_indication: bool
    pairs: list[PreferencePair] = field(default_factory=list)
    dropped: dict[str, Counter[str]] = field(default_factory=lambda: {kind: Counter() for kind in PAIR_KINDS})

    def add(self, record: Record, kind: str, chosen: str, rejected: str, meta: Mapping[str, Any] | None = None) -> None:
        """A pair over one of this split's drafting studies (its image and, if asked, its indication)."""
        self.pairs.append(_in_scope_pair(record, self.split, kind, chosen, rejected, meta, self.with_indication))


def _split_pairs(
    split: str,
    pool: list[Record],
    studies: list[Record],
    checks: list[Record],
    settings: PreferenceSettings,
    judge: Any,
    seed: int,
    sampling: _Sampling,
) -> _SplitPairs:
    """Every kind of pair of one split, in the order the kinds are built (the caller sorts them by a hash)."""
    kinds = set(settings.kinds)
    built = _SplitPairs(split, settings.with_indication)
    references = {r.study_id: draft_target(r.findings, r.impression) for r in studies}
    for record in studies:
        _edited_reference_pairs(built, record, references[record.study_id], kinds, judge, seed)
    if "model_sample" in kinds:
        _model_sample_pairs(built, studies, references, settings, judge, seed, sampling)
    n_out_of_scope = _out_of_scope_pairs(built, pool, settings, seed) if "out_of_scope" in kinds else 0
    if "false_abstention" in kinds:
        wanted = n_out_of_scope if "out_of_scope" in kinds else len(studies)
        _false_abstention_pairs(built, studies, references, wanted, seed)
    if "error_check" in kinds:
        built.pairs.extend(error_check_pairs(checks, split, settings.error_check_studies, seed))
    return built


def _edited_reference_pairs(
    built: _SplitPairs, record: Record, reference: str, kinds: set[str], judge: Any, seed: int
) -> None:
    """The pairs whose rejected answer is the study's reference with something wrong written into it: an injected
    error, an identifier, a comparison with a prior. Each is seeded by the study, so it does not depend on which
    other studies are built."""
    if "injected_error" in kinds:
        found = injected_error_reject(reference, seed=_rank(seed, "inject", record.study_id) % 2**31, judge=judge)
        if found is None:
            built.dropped["injected_error"]["no clinically significant error applies"] += 1
        else:
            built.add(record, "injected_error", reference, found[0], found[1])
    if "identifier" in kinds:
        text, meta = identifier_reject(reference, seed=_rank(seed, "identifier", record.study_id))
        built.add(record, "identifier", reference, text, meta)
    if "unsupported_comparison" in kinds:
        if reference_compares(reference):
            built.dropped["unsupported_comparison"]["reference compares with a prior"] += 1
        else:
            text = comparison_reject(reference, seed=_rank(seed, "comparison", record.study_id))
            built.add(record, "unsupported_comparison", reference, text)


def _model_sample_pairs(
    built: _SplitPairs,
    studies: list[Record],
    references: Mapping[str, str],
    settings: PreferenceSettings,
    judge: Any,
    seed: int,
    sampling: _Sampling,
) -> None:
    """The model's own drafts as rejected answers, kept where the judge finds them worse than the reference."""
    if sampling.sampler is None or settings.model_samples is None:
        built.dropped["model_sample"]["no model given"] += len(studies)
        return
    sample_settings = settings.model_samples
    chosen = studies[: sample_settings.max_studies] if sample_settings.max_studies else studies
    drafts = _sample_all(built.split, chosen, settings, sampling.sampler, seed, sampling.cache_dir, sampling.progress)
    for record, draft in zip(chosen, drafts, strict=True):
        reference = references[record.study_id]
        if not draft.strip():
            built.dropped["model_sample"]["empty sample"] += 1
            continue
        verdict = judge.judge(draft, reference)
        if verdict.count() < sample_settings.min_errors or draft.strip() == reference:
            built.dropped["model_sample"]["judge finds it no worse"] += 1
            continue
        meta = {"errors": verdict.count(), "significant_errors": verdict.count(significant=True)}
        built.add(record, "model_sample", reference, draft, meta)


def _out_of_scope_pairs(built: _SplitPairs, pool: list[Record], settings: PreferenceSettings, seed: int) -> int:
    """Abstention (chosen) against a report (rejected) for each view of this split's out-of-scope images; returns
    how many pairs were added (families whose files are absent are counted as left out)."""
    views, missing = out_of_scope_views(
        built.split, settings.out_of_scope_per_image, seed=seed, augment=built.split == "train"
    )
    built.dropped["out_of_scope"].update(missing)
    per_family: Counter[str] = Counter()
    for n, (image, view) in enumerate(views):
        # The rejected report is a real reference of the same split: no report text crosses splits.
        donor = pool[_rank(seed, "oos-report", image.family, n) % len(pool)]
        index = per_family[image.family]
        per_family[image.family] += 1
        built.pairs.append(
            PreferencePair(
                f"oos-{image.family}:{index}",
                f"oos-{image.family}",
                f"oos-{image.family}",
                built.split,
                OUT_OF_SCOPE_SOURCE,
                "out_of_scope",
                ABSTENTION_MESSAGE,
                draft_target(donor.findings, donor.impression),
                view,
                donor.indication if settings.with_indication else "",
                meta={"what": image.what, "image": view.image_id},
            )
        )
    return len(views)


def _false_abstention_pairs(
    built: _SplitPairs, studies: list[Record], references: Mapping[str, str], wanted: int, seed: int
) -> None:
    """The reference (chosen) against the abstention message (rejected) for ``wanted`` studies (seeded choice), so
    that learning to abstain does not turn into abstaining on chest radiographs."""
    ranked = sorted(studies, key=lambda r: _rank(seed, "false-abstention", r.study_id))
    for record in ranked[:wanted]:
        built.add(record, "false_abstention", references[record.study_id], ABSTENTION_MESSAGE)


def error_check_pairs(records: Sequence[Record], split: str, studies: int | None, seed: int) -> list[PreferencePair]:
    """Four pairs per study: SIMPLE and COMPLEX, for the report as written and with one injected error; the
    right answer is chosen, the opposite verdict (COMPLEX: a wrong verdict in the same JSON form) rejected."""
    ranked = sorted(records, key=lambda r: _rank(seed, "error-check", r.source, r.study_id))[:studies]
    by_id = {r.study_id: r for r in ranked}
    rows, _ = build_errorcheck_training_set(
        [{"uid": r.study_id, "split": split, "findings": r.findings, "impression": r.impression} for r in ranked],
        seed=seed,
        variants_per_report=2,
    )
    categories = [c.value for c in ErrorCategory]
    out = []
    for row in rows:
        record = by_id[row["uid"]]
        if row["has_error"]:
            wrong_complex = json.dumps({"has_error": False, "category": None, "span": None})
        else:
            category = categories[_rank(seed, "wrong-category", row["id"]) % len(categories)]
            wrong_complex = json.dumps({"has_error": True, "category": category, "span": None})
        wrong_simple = "no" if row["has_error"] else "yes"
        meta = {"has_error": row["has_error"], "family": row.get("family"), "variant": row["variant"]}
        for task, chosen, rejected in (
            ("check_simple", row["simple_target"], wrong_simple),
            ("check_complex", row["complex_target"], wrong_complex),
        ):
            out.append(
                PreferencePair(
                    f"{row['id']}:{task}",
                    record.study_id,
                    record.patient_id,
                    split,
                    record.source,
                    "error_check",
                    chosen,
                    rejected,
                    None,
                    task=task,
                    report=row["text"],
                    meta=meta,
                )
            )
    return out


def _in_scope_pair(
    record: Record,
    split: str,
    kind: str,
    chosen: str,
    rejected: str,
    meta: Mapping[str, Any] | None,
    with_indication: bool,
) -> PreferencePair:
    image = record.image
    return PreferencePair(
        f"{record.study_id}:{kind}",
        record.study_id,
        record.patient_id,
        split,
        record.source,
        kind,
        chosen,
        rejected,
        ImageView(image.path, image.image_id, image.member) if image is not None else None,
        record.indication if with_indication else "",
        meta=dict(meta or {}),
    )


def _split_counts(
    built: Sequence[PreferencePair], n_studies: int, n_pool: int, dropped: Mapping[str, Counter[str]]
) -> dict[str, Any]:
    by_source: dict[str, Counter[str]] = {}
    for p in built:
        by_source.setdefault(p.source, Counter())[p.kind] += 1
    by_kind = Counter(p.kind for p in built)
    return {
        "studies_available": n_pool,
        "studies_used": n_studies,
        "pairs": len(built),
        "by_kind": {kind: by_kind.get(kind, 0) for kind in PAIR_KINDS},
        "by_source": {name: dict(sorted(c.items())) for name, c in sorted(by_source.items())},
        "left_out": {kind: dict(sorted(c.items())) for kind, c in dropped.items() if c},
        "out_of_scope_images": sorted({p.meta["image"] for p in built if p.kind == "out_of_scope"}),
    }


def _sample_all(
    split: str,
    records: Sequence[Record],
    settings: PreferenceSettings,
    sampler: SampleFn,
    seed: int,
    cache_dir: Path | None,
    progress: bool,
) -> list[str]:
    """Drafts for ``records`` in fixed, seeded batches; finished batches are kept in ``cache_dir``."""
    assert settings.model_samples is not None
    size = settings.model_samples.batch_size
    batches = [list(records[i : i + size]) for i in range(0, len(records), size)]
    fingerprint = hashlib.sha256(
        json.dumps([seed, split, asdict(settings.model_samples), [r.study_id for r in records]]).encode()
    ).hexdigest()
    cached: dict[int, list[str]] = {}
    cache = cache_dir / f"model_samples.{split}.jsonl" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        for line in cache.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row.get("fingerprint") == fingerprint:
                cached[int(row["batch"])] = list(row["drafts"])
    if cache is not None and not cached:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text("", encoding="utf-8")  # a stale cache (other settings) is not mixed with this one
    iterator: Iterable[tuple[int, list[Record]]] = enumerate(batches)
    if progress:
        iterator = tqdm(iterator, total=len(batches), desc=f"model samples ({split})", file=sys.stderr)
    drafts: list[str] = []
    for index, batch in iterator:
        if index not in cached:
            items = [
                (r.study_id, draft_prompt(r.indication if settings.with_indication else None), r.image) for r in batch
            ]
            cached[index] = list(sampler(split, items, _rank(seed, "sample", split, index) % 2**31))
            if len(cached[index]) != len(batch):
                raise InputError(f"the sampler returned {len(cached[index])} drafts for {len(batch)} prompts")
            if cache is not None:
                with cache.open("a", encoding="utf-8") as handle:
                    row = {"fingerprint": fingerprint, "batch": index, "drafts": cached[index]}
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        drafts.extend(cached[index])
    return drafts


def model_sampler(model: torch.nn.Module, processor: Any, settings: ModelSampleSettings) -> SampleFn:
    """A sampler drawing drafts from ``model`` (the stage-2 model) with ``settings``' sampling parameters."""

    def sample(split: str, items: list[tuple[str, str, Any]], batch_seed: int) -> list[str]:
        prompts = [processor.chat_prompt(instruction, image=image is not None) for _, instruction, image in items]
        images = [image.load() if image is not None else None for _, _, image in items]
        generation = GenerationSettings(
            strategy="sample",
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            seed=batch_seed,
        )
        return [g.text for g in generate(model, processor, prompts, images, generation).generations]

    return sample


# --------------------------------------------------------------------------------------------- checks and files
def check_no_leakage(pairs: Mapping[str, Sequence[PreferencePair]]) -> None:
    """Raise when a study, patient or out-of-scope image family appears in two splits."""
    seen: dict[tuple[str, str], str] = {}
    for split, items in pairs.items():
        for p in items:
            if p.split != split:
                raise InputError(f"pair {p.pair_id} says split {p.split!r} but is listed under {split!r}")
            for what, value in (("study", p.study_id), ("patient", p.patient_id)):
                first = seen.setdefault((what, value), split)
                if first != split:
                    raise InputError(f"{what} {value} has preference pairs in splits {first!r} and {split!r}")


def write_preferences(preferences: PreferenceSet, directory: str | Path) -> Path:
    """``directory/{split}.jsonl`` (one pair a line) and ``directory/counts.json``, each written atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for split, items in preferences.pairs.items():
        path = directory / f"{split}.jsonl"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            for p in items:
                handle.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
        tmp.replace(path)
    counts = directory / COUNTS_FILE
    tmp = counts.with_name(counts.name + ".tmp")
    tmp.write_text(json.dumps(preferences.counts, indent=2) + "\n")
    tmp.replace(counts)
    return directory


def read_preferences(directory: str | Path, split: str) -> list[PreferencePair]:
    """The pairs of ``split`` from ``directory/{split}.jsonl``; errors name the file and line, never the text."""
    path = Path(directory) / f"{split}.jsonl"
    if not path.is_file():
        raise InputError(f"{path}: no preference pairs for split {split!r}")
    pairs = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            pairs.append(PreferencePair.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError, KeyError, InputError) as e:
            raise InputError(f"{path}: line {line_no} is not a preference pair ({type(e).__name__})") from None
        if pairs[-1].split != split or pairs[-1].kind not in PAIR_KINDS:
            raise InputError(f"{path}: line {line_no}: split or kind does not fit this file")
    if not pairs:
        raise InputError(f"{path}: no preference pairs")
    return pairs
