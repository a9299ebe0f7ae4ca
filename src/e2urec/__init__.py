"""e2urec: LLM-based recommendation that can forget (E2URec unlearning and its baselines)."""

__version__ = "0.1.0"
