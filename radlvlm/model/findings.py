"""The finding classifier: a convolutional network that reads a frontal chest radiograph into calibrated
per-finding probabilities, saved and loaded like any Hugging Face model.

Why a CNN beside the language model: a ViT trained from scratch cannot learn from the ~2,000 labelled
radiographs a small site (or this project) has, while a small residual CNN does (``shared/MODEL_NOTES.md``:
abnormal-vs-normal AUROC 0.83 on unseen patients). Its findings reach a report writer as text (the prompt names
them, as in diagnosis-driven report generation), so it serves beside any model: the embedded one, a converted
LLaVA-Rad or one served by vLLM. Error checks against the image compare its findings with what a report says.

The backbone is transformers' ``ResNetModel`` (a well-kept implementation with ``save_pretrained`` for free);
the shipped classifier is an ensemble of the fold models its recipe trains (their averaged logits), so the
out-of-fold predictions its calibration was fitted on come from models of the same kind.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoModel, PreTrainedModel, ResNetModel
from transformers.modeling_outputs import BaseModelOutput

from radlvlm.errors import InputError, ModelError
from radlvlm.imaging import Image, ToModelInput, View
from radlvlm.model.default import tower_config_of
from radlvlm.model.finding_config import (
    ABNORMAL,
    FINDING_LABELS,
    NIH_LABELS,
    FindingClassifierConfig,
    FindingTowerConfig,
)

__all__ = [
    "ABNORMAL",
    "FINDING_LABELS",
    "NIH_LABELS",
    "FindingClassifier",
    "FindingClassifierConfig",
    "FindingTower",
    "FindingTowerConfig",
    "ImageFindings",
    "LabelFinding",
    "NotFrontalError",
    "load_finding_classifier",
]


class NotFrontalError(InputError):
    """The classifier reads frontal (PA or AP) radiographs only."""


@dataclass(frozen=True)
class LabelFinding:
    """One label's reading: calibrated probability, the threshold it is called at, and whether it is present."""

    label: str
    probability: float
    threshold: float | None
    present: bool
    validated: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "probability": round(self.probability, 4),
            "threshold": None if self.threshold is None else round(self.threshold, 4),
            "present": self.present,
            "validated": self.validated,
        }


@dataclass(frozen=True)
class ImageFindings:
    """What the classifier read in one radiograph.

    ``findings`` holds every label; :attr:`stated` the validated findings a draft may state: the validated labels
    over their thresholds, and only when ``Abnormal`` is over its own (the gate that decides normal vs abnormal);
    if the gate is open and no single label clears its threshold, the validated label nearest to clearing its own
    (the largest log-odds of probability over threshold), so a draft of an image read as abnormal names a finding.
    A label without a threshold (its recipe found none at which the classifier's calls were precise enough) is
    read and reported but never stated.
    """

    model_id: str
    findings: tuple[LabelFinding, ...]

    def get(self, label: str) -> LabelFinding:
        for finding in self.findings:
            if finding.label == label:
                return finding
        raise KeyError(label)

    @property
    def abnormal(self) -> LabelFinding:
        return self.get(ABNORMAL)

    @property
    def stated(self) -> tuple[str, ...]:
        if not self.abnormal.present:
            return ()
        candidates = [f for f in self.findings if f.label != ABNORMAL and f.validated and f.threshold is not None]
        present = [f.label for f in candidates if f.present]
        if present or not candidates:
            return tuple(present)
        return (max(candidates, key=_evidence).label,)

    def as_dict(self) -> dict[str, Any]:
        return {
            "classifier": self.model_id,
            "abnormal": self.abnormal.as_dict(),
            "stated": list(self.stated),
            "labels": [f.as_dict() for f in self.findings if f.label != ABNORMAL],
        }


def _evidence(finding: LabelFinding) -> float:
    """Log-odds of a finding's probability over its threshold (> 0: present)."""
    p = min(max(finding.probability, 1e-6), 1 - 1e-6)
    t = min(max(finding.threshold or 0.5, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p)) - math.log(t / (1 - t))


class _Member(nn.Module):
    """One backbone and its label head."""

    def __init__(self, config: FindingClassifierConfig) -> None:
        super().__init__()
        self.backbone = ResNetModel(config.backbone_config())
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_sizes[-1], len(config.labels))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classify_features(self.backbone(pixel_values).last_hidden_state)

    def classify_features(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) last-stage feature maps → (B, labels) logits (the backbone's pooler is this mean)."""
        return self.head(self.dropout(maps.mean(dim=(2, 3))))


class FindingClassifier(PreTrainedModel):
    """A residual CNN (or an ensemble of them) over one-channel radiographs → one logit per label."""

    config_class = FindingClassifierConfig
    base_model_prefix = "finding_classifier"
    main_input_name = "pixel_values"

    def __init__(self, config: FindingClassifierConfig) -> None:
        super().__init__(config)
        self.members = nn.ModuleList(_Member(config) for _ in range(config.ensemble))
        self._transform = ToModelInput(config.transform_config())
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.logits(pixel_values)

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) normalised pixels → (B, labels) logits, averaged over the ensemble."""
        return torch.stack([member(pixel_values) for member in self.members]).mean(0)

    def pixel_values(self, images: Sequence[Image | torch.Tensor]) -> torch.Tensor:
        """Display pixels in [0, 1] → the classifier's input; a non-frontal image is refused with the reason."""
        for image in images:
            if isinstance(image, Image) and image.view not in (View.PA, View.AP):
                raise NotFrontalError(
                    f"the finding classifier reads frontal (PA or AP) radiographs only; this image's view is "
                    f"{image.view.value}"
                )
        return torch.stack([self._transform(image) for image in images])

    @torch.inference_mode()
    def activation_maps(self, image: Image | torch.Tensor, labels: Sequence[str]) -> torch.Tensor:
        """Where in one radiograph the evidence for each of ``labels`` lies: class activation maps (Zhou et al.,
        CVPR 2016), the last stage's features weighted by each label's head weights, averaged over the ensemble
        and brought to the model input's size → (len(labels), S, S) logit contributions, positive where the
        image speaks for the label.

        Written here rather than with ``monai.visualize.CAM``: that class hooks the served module for its
        lifetime (every later forward would keep its activations), and for a linear head over pooled features
        the map is this one weighted sum.
        """
        unknown = [label for label in labels if label not in self.config.labels]
        if unknown:
            raise InputError(f"the classifier has no label {unknown[0]!r}")
        index = torch.tensor([self.config.labels.index(label) for label in labels])
        was_training = self.training
        self.eval()
        try:
            pixels = self.pixel_values([image]).to(self.device, self.dtype)
            maps = []
            for member in self.members:
                features = member.backbone(pixels).last_hidden_state.float()  # (1, C, h, w)
                maps.append(torch.einsum("chw,lc->lhw", features[0], member.head.weight.float()[index]))
        finally:
            self.train(was_training)
        mean = torch.stack(maps).mean(0).unsqueeze(0)
        size = pixels.shape[-2:]
        return torch.nn.functional.interpolate(mean, size=size, mode="bilinear", align_corners=False)[0].cpu()

    def input_region(self, image: Image | torch.Tensor) -> tuple[slice, slice]:
        """The rows and columns of the model input that show ``image`` (the rest is letterbox padding): found by
        sending a blank image of the same shape through the same transform, so the geometry is never written
        twice."""
        pixels = image.pixels if isinstance(image, Image) else image
        blank = torch.ones(pixels.shape[-2:], dtype=torch.float32)
        inside = self._transform(blank)[0] > self._transform(torch.zeros_like(blank))[0]
        rows, columns = inside.any(1).nonzero().flatten(), inside.any(0).nonzero().flatten()
        return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(columns[0]), int(columns[-1]) + 1)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities of (B, labels) logits (Platt scaling fitted out of fold)."""
        scale = torch.ones(len(self.config.labels))
        shift = torch.zeros(len(self.config.labels))
        for j, label in enumerate(self.config.labels):
            if label in self.config.calibration:
                scale[j], shift[j] = self.config.calibration[label]
        return torch.sigmoid(logits.float() * scale + shift)

    @torch.inference_mode()
    def classify(self, images: Sequence[Image | torch.Tensor], *, model_id: str = "") -> list[ImageFindings]:
        """Read each radiograph: calibrated probability, threshold and presence of every label."""
        if not images:
            return []
        was_training = self.training
        self.eval()
        try:
            pixels = self.pixel_values(images).to(self.device, self.dtype)
            probabilities = self.probabilities(self.logits(pixels).cpu())
        finally:
            self.train(was_training)
        return self.read(probabilities, model_id=model_id)

    def read(self, probabilities: torch.Tensor, *, model_id: str = "") -> list[ImageFindings]:
        """(B, labels) calibrated probabilities → findings with this classifier's thresholds."""
        name = model_id or self.config.classifier_id
        out = []
        for row in probabilities.tolist():
            findings = []
            for label, p in zip(self.config.labels, row, strict=True):
                threshold = self.config.thresholds.get(label)
                p = float(p) if math.isfinite(p) else 0.0
                findings.append(
                    LabelFinding(
                        label=label,
                        probability=p,
                        threshold=threshold,
                        present=threshold is not None and p >= threshold,
                        validated=label in self.config.validated,
                    )
                )
            out.append(ImageFindings(name, tuple(findings)))
        return out


class FindingTower(FindingClassifier):
    """The finding classifier as the vision tower of a vision-language model: its features reach the language model
    as visual tokens through the projector (LLaVA's path), while its labels reach the writer as the prompt's
    findings line. Same weights as :class:`FindingClassifier` (a classifier's ``model.safetensors`` loads as it is).

    Called as a tower, it answers transformers' encoder output: the last stage's feature map of every ensemble
    member, side by side, one token per cell (``hidden_states`` holds that one layer). It is a frozen reader inside
    the LVLM: ``train()`` leaves it in eval mode, so its batch norms keep the statistics its own recipe fitted.

    The served model's tower is also the classifier that reads a draft's findings (one network in memory). The
    feature maps of the last few images it classified are remembered, so the generation that follows, given the
    same pixels, does not run the network a second time for one draft.
    """

    config_class = FindingTowerConfig
    _RECALLED = 8  # images whose feature maps are kept: a draft's generation follows its classification closely

    def __init__(self, config: FindingTowerConfig) -> None:
        super().__init__(config)
        # (pixels, feature maps) of the last images classified: when the same model's generation then reads the
        # same pixels as its tower, the network is not run a second time for one draft.
        self._recent: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=self._RECALLED)
        self._recent_lock = threading.Lock()

    def _feature_maps(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) → (B, members x C, h, w): every member's last-stage feature map, side by side."""
        return torch.cat([member.backbone(pixel_values).last_hidden_state for member in self.members], dim=1)

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        maps = self._feature_maps(pixel_values)
        if not torch.is_grad_enabled():
            with self._recent_lock:
                self._recent.extend(zip(pixel_values, maps, strict=True))
        width = maps.shape[1] // len(self.members)
        return torch.stack(
            [member.classify_features(maps[:, k * width : (k + 1) * width]) for k, member in enumerate(self.members)]
        ).mean(0)

    def _recalled(self, pixel_values: torch.Tensor) -> torch.Tensor | None:
        """The feature maps of ``pixel_values`` when every image in it was just classified; None otherwise."""
        if torch.is_grad_enabled():  # training: the maps must be computed in the graph
            return None
        with self._recent_lock:
            found = [self._remembered(pixels) for pixels in pixel_values]
        return None if any(maps is None for maps in found) else torch.stack(found)  # type: ignore[arg-type]

    def _remembered(self, pixels: torch.Tensor) -> torch.Tensor | None:
        """The feature maps of one image classified lately with exactly these pixels (the newest first)."""
        for seen, maps in reversed(self._recent):
            same_kind = seen.shape == pixels.shape and seen.dtype == pixels.dtype and seen.device == pixels.device
            if same_kind and torch.equal(seen, pixels):
                return maps
        return None

    def forward(self, pixel_values: torch.Tensor, **_: Any) -> BaseModelOutput:  # type: ignore[override]
        maps = self._recalled(pixel_values)
        if maps is None:
            maps = self._feature_maps(pixel_values)  # (B, C, h, w)
        tokens = maps.flatten(2).transpose(1, 2)
        return BaseModelOutput(last_hidden_state=tokens, hidden_states=(tokens,))

    def train(self, mode: bool = True) -> FindingTower:
        return super().train(False)


def load_finding_classifier(directory: Path, *, dtype: torch.dtype = torch.float32) -> FindingClassifier:
    """The finding classifier saved in ``directory``: a classifier of its own (``save_pretrained``), or the vision
    tower of a vision-language model (the embedded model keeps one copy of the network, in its base); in eval mode.

    Stored in float16 (the package stays small), it is read in ``dtype``: float32 by default, which CPUs convolve
    fast."""
    tower = tower_config_of(directory)
    if tower is None:
        return FindingClassifier.from_pretrained(directory, dtype=dtype, local_files_only=True).eval()
    model = FindingClassifier(FindingClassifierConfig.from_values(tower))
    prefix = "model.vision_tower."
    state: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            state.update({k[len(prefix) :]: weights.get_tensor(k) for k in weights.keys() if k.startswith(prefix)})  # noqa: SIM118 - safe_open is not a dict
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{directory}: the finding tower's weights do not fit its config ({_first_line(e)})") from e
    return model.to(dtype).eval()


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


# What an LVLM's config names as its tower is built by AutoModel (transformers' Llava does so).
AutoModel.register(FindingTowerConfig, FindingTower, exist_ok=True)
