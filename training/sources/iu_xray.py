"""IU-Xray: the split manifests of radiologist reports (text only unless ``image_root`` holds the PNGs)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radlvlm.errors import InputError

if TYPE_CHECKING:
    pass

from radlvlm.tasks import compose_report
from radlvlm.training.sources.base import (
    _CHECK,
    _DRAFT,
    SPLITS,
    Drop,
    ImageRef,
    Item,
    Note,
    Record,
    Source,
    _check_keys,
    _check_split,
    _read_rows,
    _require_file,
    _take,
    _text,
)

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
