"""The bottom layer: what every other package builds on, importing nothing above it.

config types (`config.py`), the denoising loop with `Conditioning` / `StepContext` / hooks (`sampling.py`),
the base model's components (`components.py`) and where they come from (`sources.py`), schedulers,
attention capture, atomic IO, seeding, the image loader (`images.py`), `Subject` / `Benchmark`
(`benchmark.py`), `UserError` and the registries. `tests/test_layers.py` holds it to that.
"""
