"""Triplane reconstruction (LRM/TripoSR-style): images + cameras -> triplane NeRF -> renders, mesh."""
from core.recon.config import ReconConfig
from core.recon.model import ReconModel
from core.recon.pipeline import ReconInputError, ReconPipeline
from core.recon.scene import TriplaneScene, save_orbit

__all__ = ["ReconConfig", "ReconModel", "ReconPipeline", "TriplaneScene", "ReconInputError", "save_orbit"]
