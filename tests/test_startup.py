"""Per-process fixed cost (issue 17): what every process of a sharded run pays before and after its share of the
work, and so what keeps two processes from halving a run. Asserted as behaviour (what is imported, what the
garbage collector walks), never as timings: `benchmarks/scaling.py` measures the seconds."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_a_run_process_imports_no_library_it_does_not_use():
    """The runner does not import the Stable Diffusion pipeline module (with transformers' image stack, ~0.6 s),
    which DreamBooth-LoRA uses only to save and load its LoRA files."""
    out = _python("""
        import sys
        import persobench.harness.runner
        from persobench.core.registry import load_plugins
        load_plugins()
        print("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion" in sys.modules)
    """)
    assert out == "False"


def test_a_run_freezes_the_imported_libraries_and_never_a_model(tiny_model, tmp_path):
    """After the imports, everything alive moves out of the collector's view (`gc.freeze`), so each collect that
    frees a dropped method walks only the run's own objects, and exit skips the rest; the base model, loaded
    after, stays collectable, and so does every fitted state (the one-method-resident test checks they die)."""
    out = _python(f"""
        import gc
        from persobench.core.config import load_config
        from persobench.harness import runner

        loaded = []
        load = runner.load_components
        runner.load_components = lambda cfg: loaded.append(load(cfg)) or loaded[-1]
        cfg = load_config(None, ["model.source={tiny_model}", "store={tmp_path / 'runs'}", "dataset.subjects=[ball1]",
                                 "dataset.max_prompts=1", "dataset.images_per_prompt=1", "sampler.steps=2", "metrics.names=[]"])
        runner.run(cfg)
        unet = loaded[0].unet
        print(gc.get_freeze_count() > 1000, any(o is unet for o in gc.get_objects()))
    """)
    assert out == "True True"
