"""The typed spec: models, TOML load/save, settings, diff. Imports nothing else of ours."""

from .diff import FieldChange, diff_specs, render_diff
from .errors import SpecError, SpecIssue
from .io import atomic_write, load_spec, parse_spec, render_spec, save_spec, spec_from_data
from .models import (
    AgentSpec,
    EngineSpec,
    FewShotExample,
    IntelligenceSpec,
    LearningSpec,
    MemorySpec,
    RenderingSpec,
    Spec,
    ToolServerSpec,
    ToolsSpec,
    VerifierSpec,
)
from .settings import Settings

__all__ = [
    "AgentSpec",
    "EngineSpec",
    "FewShotExample",
    "FieldChange",
    "IntelligenceSpec",
    "LearningSpec",
    "MemorySpec",
    "RenderingSpec",
    "Settings",
    "Spec",
    "SpecError",
    "SpecIssue",
    "ToolServerSpec",
    "ToolsSpec",
    "VerifierSpec",
    "atomic_write",
    "diff_specs",
    "load_spec",
    "parse_spec",
    "render_diff",
    "render_spec",
    "save_spec",
    "spec_from_data",
]
