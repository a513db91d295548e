"""Next-scale autoregressive novel view synthesis (ArchonView-style), streamed coarse to fine."""
from core.nvs.config import NVSConfig
from core.nvs.model import NVSTransformer
from core.nvs.pipeline import Frame, NVSPipeline, SourceHandle

__all__ = ["NVSConfig", "NVSTransformer", "NVSPipeline", "Frame", "SourceHandle"]
