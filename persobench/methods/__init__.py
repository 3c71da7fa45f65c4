"""Method adapters; importing this package registers every built-in method."""

from . import blip_diffusion, dreambooth_lora, textual_inversion, vanilla_sd  # noqa: F401  (registers)
from .base import Fitted, Personalizer, methods, register_method

__all__ = ["Fitted", "Personalizer", "methods", "register_method"]
