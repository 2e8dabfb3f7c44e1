"""Sources from a recipe: a list of mappings, each with a ``type`` and its arguments, checked before anything
is read."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radlvlm.errors import InputError

if TYPE_CHECKING:
    pass

from radlvlm.safety.dicom_deid import DicomDeidentifier
from radlvlm.safety.pseudonyms import PseudonymMap, load_or_create_key
from radlvlm.training.sources.base import Source
from radlvlm.training.sources.covid import CovidSource
from radlvlm.training.sources.hospital import HospitalSource
from radlvlm.training.sources.iu_xray import IUXraySource
from radlvlm.training.sources.nih import NIHSource

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
    from radlvlm.training.pseudo_pairs import LabelMatchedPairs  # noqa: PLC0415 - import cycle: pseudo_pairs imports radlvlm.training.sources, whose __init__ imports this module

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
        from radlvlm.safety.text_deid import ReportDeidentifier, TextDeidConfig  # noqa: PLC0415 - Presidio: loaded only when a spaCy model is named for report de-identification

        report_deidentifier = ReportDeidentifier(TextDeidConfig(spacy_model=str(spacy_model)))
    if options.get("deidentify"):
        if not options.get("key_file"):
            raise InputError(f"data source {position} (hospital): 'deidentify' needs a 'key_file' (the project key)")

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
