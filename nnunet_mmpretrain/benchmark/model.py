"""The benchmark's data model: label budgets, pretraining presets, methods, datasets and the
suite that holds them (parsed and validated from JSON by :mod:`.suite`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

#: fine-tuning kind -> (segmentation trainer, needs a pretraining preset)
KINDS = {
    "scratch": ("nnUNetTrainerMMBench", False),
    "pretrained": ("nnUNetTrainerMMBench_pretrained", True),
    "pretrained_frozen": ("nnUNetTrainerMMBench_pretrainedFrozen", True),
    "random_frozen": ("nnUNetTrainerMMBench_randomFrozen", False),
    "pretrained_template_aug": ("nnUNetTrainerMMBench_pretrainedTemplateAug", True),
}
#: classification tasks: kind -> trainer (benchmark/trainers.py, over training/classifier.py)
CLASSIFIER = "nnUNetTrainerMMBenchClassifier"
CLASSIFIER_SUFFIX = {"scratch": "", "pretrained": "_pretrained", "pretrained_frozen": "_pretrainedFrozen",
                     "random_frozen": "_randomFrozen", "pretrained_template_aug": "_pretrained"}
STEMS = ("modality", "repeat", "reinit")
TASKS = ("segmentation", "classification")
SCHEDULE_KEYS = ("epochs", "iterations", "val_iterations", "mirroring", "save_every", "initial_lr")


class SuiteError(ValueError):
    """A suite or preset problem: one line naming the file, the key and the fix."""


@dataclass(frozen=True)
class LabelBudget:
    """Labelled training cases per cell: a fraction of the fold's training patients or a count."""
    kind: str        # "fraction" | "cases"
    value: float

    @property
    def tag(self) -> str:
        return f"frac{round(self.value * 100):d}" if self.kind == "fraction" else f"n{int(self.value)}"

    @property
    def label(self) -> str:
        return f"{self.value * 100:g} %" if self.kind == "fraction" else f"{int(self.value)} cases"


@dataclass
class Preset:
    name: str
    trainer: str
    plans: str
    configuration: str
    train_args: List[str] = field(default_factory=list)
    description: str = ""
    source: str = ""
    #: a *supervised* encoder (the positive control): ``{"dataset": ID, "schedule": {...}, "seed": S}``
    #: trains ``trainer`` with labels on that (disjoint) dataset; its encoder becomes the bundle
    supervised: Optional[dict] = None


@dataclass
class Method:
    name: str
    kind: str
    trainer: Optional[str]                 # explicit trainer override (else from the kind)
    pretraining: Optional[str]
    stem: Optional[str]
    compare_to: List[str]
    budgets: Optional[List[str]] = None    # budget tags this method runs at (None: every budget)
    schedule: Dict[str, object] = field(default_factory=dict)   # overrides of the suite's schedule

    def trainer_for(self, task: str) -> str:
        if self.trainer:
            return self.trainer
        if task == "classification":
            return CLASSIFIER + CLASSIFIER_SUFFIX[self.kind]
        return KINDS[self.kind][0]


@dataclass
class DatasetSpec:
    id: int
    name: str
    task: str = "segmentation"
    test: bool = False
    regions: Dict[str, str] = field(default_factory=dict)
    patient_regex: Optional[str] = None
    convert: str = ""
    #: cases whose id matches are never trained on: they join every fold's validation and are
    #: reported apart ("unseen" sites); the others are the in-domain cases
    unseen_regex: Optional[str] = None


@dataclass
class Suite:
    name: str
    path: str
    description: str
    datasets: List[DatasetSpec]
    folds: List[int]
    num_folds: int
    seeds: List[int]
    budgets: List[LabelBudget]
    schedule: dict
    methods: Dict[str, Method]
    presets: Dict[str, Preset]
    corpus: dict
    plans: str
    configuration: str
    phantoms: Optional[dict] = None
    references: List[dict] = field(default_factory=list)
    device: str = "cpu"
    env: Dict[str, str] = field(default_factory=dict)
    split_seed: int = 12345
    missing_modality: Optional[dict] = None
    raw: dict = field(default_factory=dict)

    def schedule_for(self, method: Method) -> dict:
        """The suite's fine-tuning schedule with the method's own overrides (e.g. a longer run)."""
        return {**self.schedule, **method.schedule}

    def presets_for(self, method: Method) -> List[str]:
        """Presets a cell of ``method`` needs: its own, and the template donor of missing-modality runs."""
        out = [method.pretraining] if method.pretraining else []
        mm = self.missing_modality
        if mm and method.name in mm["methods"] and mm.get("bundle_preset") and "template" in mm.get("fills", ["template"]):
            out.append(mm["bundle_preset"])
        return out
