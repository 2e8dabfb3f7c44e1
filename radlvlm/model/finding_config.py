"""The finding classifier's configs, apart from the network (:mod:`radlvlm.model.findings`): a model config names
its vision tower's type, and reading one must not cost the seconds that torch's and MONAI's imports take."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from transformers import AutoConfig, PretrainedConfig, ResNetConfig

from radlvlm.errors import InputError
from radlvlm.model.default import FINDING_TOWER_MODEL_TYPE

if TYPE_CHECKING:
    from radlvlm.imaging import ImageTransformConfig

__all__ = [
    "ABNORMAL",
    "FINDING_LABELS",
    "NIH_LABELS",
    "FindingClassifierConfig",
    "FindingTowerConfig",
]

ABNORMAL = "Abnormal"
# NIH ChestX-ray14's fourteen findings, in the order of its label table.
NIH_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
# What the classifier outputs: "Abnormal" (any finding: not "No Finding"), then the fourteen findings.
FINDING_LABELS: tuple[str, ...] = (ABNORMAL, *NIH_LABELS)


_BOOKKEEPING = ("model_type", "architectures", "dtype", "transformers_version")


class FindingClassifierConfig(PretrainedConfig):
    """What the classifier is: its backbone, labels, input and how its scores become findings.

    Args:
        labels (list[str]): output labels, ``Abnormal`` first (any finding).
        image_size (int, default 128): square input side; radiographs are letterboxed (aspect kept).
        embedding_size, hidden_sizes, depths: the ResNet backbone (basic blocks).
        ensemble (int, default 1): backbones whose logits are averaged.
        dropout (float, default 0.3): before the label head, in training.
        calibration (dict[str, list[float]]): per label ``[a, b]`` of Platt scaling, P = sigmoid(a * logit + b),
            fitted on out-of-fold predictions; a label without one reports sigmoid(logit), uncalibrated.
        thresholds (dict[str, float]): per label, the calibrated probability at which it is called present.
        validated (dict[str, dict]): labels whose out-of-fold AUROC was measured with enough positive patients,
            and those figures; only these are stated in drafts or used to check a report.
        classifier_id (str): the name answers carry.
    """

    model_type = "radlvlm_finding_classifier"

    def __init__(
        self,
        labels: Sequence[str] = FINDING_LABELS,
        image_size: int = 128,
        embedding_size: int = 32,
        hidden_sizes: Sequence[int] = (32, 64, 128, 256),
        depths: Sequence[int] = (2, 2, 2, 2),
        ensemble: int = 1,
        dropout: float = 0.3,
        calibration: dict[str, list[float]] | None = None,
        thresholds: dict[str, float] | None = None,
        validated: dict[str, dict[str, Any]] | None = None,
        classifier_id: str = "radlvlm-findings",
        **kwargs: Any,
    ) -> None:
        labels = list(labels)
        if not labels or labels[0] != ABNORMAL or len(set(labels)) != len(labels):
            raise InputError(f"labels must be distinct and start with {ABNORMAL!r}")
        if image_size < 32 or ensemble < 1 or not 0 <= dropout < 1:
            raise InputError("image_size must be >= 32, ensemble >= 1 and dropout in [0, 1)")
        if len(hidden_sizes) != len(depths) or not hidden_sizes:
            raise InputError("hidden_sizes and depths must have the same, non-zero length")
        for name, table in (("calibration", calibration or {}), ("thresholds", thresholds or {})):
            unknown = set(table) - set(labels)
            if unknown:
                raise InputError(f"{name} names labels the classifier does not have: {sorted(unknown)}")
        if any(not 0 < t < 1 for t in (thresholds or {}).values()):
            raise InputError("thresholds are probabilities strictly between 0 and 1")
        self.labels = labels
        self.image_size = image_size
        self.embedding_size = embedding_size
        self.hidden_sizes = list(hidden_sizes)
        self.depths = list(depths)
        self.ensemble = ensemble
        self.dropout = dropout
        self.calibration = dict(calibration or {})
        self.thresholds = dict(thresholds or {})
        self.validated = dict(validated or {})
        self.classifier_id = classifier_id
        super().__init__(**kwargs)

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> FindingClassifierConfig:
        """A config from another one's saved values (``to_dict()``, or a tower's entry in a model's config), without
        transformers' bookkeeping keys, which name the other class."""
        return cls(**{k: v for k, v in values.items() if k not in _BOOKKEEPING})

    def backbone_config(self) -> ResNetConfig:
        return ResNetConfig(
            num_channels=1,
            embedding_size=self.embedding_size,
            hidden_sizes=self.hidden_sizes,
            depths=self.depths,
            layer_type="basic",
            downsample_in_first_stage=False,
        )

    def transform_config(self) -> ImageTransformConfig:
        from radlvlm.imaging import ImageTransformConfig  # noqa: PLC0415 - pydicom and MONAI: seconds to import

        return ImageTransformConfig(size=self.image_size, channels=1, mean=(0.5,), std=(0.5,))


class FindingTowerConfig(FindingClassifierConfig):
    """The finding classifier as a vision-language model's vision tower
    (:class:`radlvlm.model.findings.FindingTower`): the same network and weights, read for its last stage's feature
    map instead of its labels. Each cell of that map (one per ``patch_size`` x ``patch_size`` input pixels) is one
    visual token, ``hidden_size`` wide: every ensemble member's channels side by side.
    """

    model_type = FINDING_TOWER_MODEL_TYPE

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.image_size % self.patch_size:
            raise InputError(
                f"a finding tower's image_size must be a multiple of its stride {self.patch_size}, "
                f"got {self.image_size}"
            )

    @property
    def hidden_size(self) -> int:
        return self.ensemble * self.hidden_sizes[-1]

    @property
    def patch_size(self) -> int:
        # ResNet's stem (a stride-2 convolution and a stride-2 pooling) then a stride of 2 in every stage but the
        # first (downsample_in_first_stage=False).
        return 4 * 2 ** (len(self.hidden_sizes) - 1)


# A vision-language model's config names its tower's type; AutoConfig must know it to read one (exist_ok: a module
# reload is harmless). The tower's model class registers with AutoModel in radlvlm.model.findings.
AutoConfig.register(FindingTowerConfig.model_type, FindingTowerConfig, exist_ok=True)
