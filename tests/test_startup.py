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


def test_the_runner_does_not_import_the_sd_pipeline_module():
    """The runner does not import the Stable Diffusion pipeline module (with transformers' image stack): what
    DreamBooth-LoRA needs of it, the LoRA file IO, is its loader mixin's."""
    out = _python("""
        import sys
        import persobench.harness.runner
        from persobench.core.registry import load_plugins
        load_plugins()
        print("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion" in sys.modules)
    """)
    assert out == "False"


def test_the_cli_freezes_the_imported_libraries_and_never_a_model(tiny_model, tmp_path):
    """`persobench run` moves everything alive after its imports out of the collector's view (`gc.freeze`), so
    each collect that frees a dropped method walks only the run's own objects, and exit skips the rest; the base
    model, loaded after (here in each of a sweep's two points), stays collectable, as does every fitted state
    (tests/test_blip_diffusion.py::test_one_method_resident_at_a_time checks they die)."""
    out = _python(f"""
        import gc
        from persobench.harness import cli, runner

        loaded = []
        load = runner.load_components
        runner.load_components = lambda cfg: loaded.append(load(cfg)) or loaded[-1]
        code = cli.main(["run", "model.source={tiny_model}", "store={tmp_path / 'runs'}", "dataset.subjects=[ball1]",
                         "dataset.max_prompts=1", "dataset.images_per_prompt=1", "sampler.steps=2", "metrics.names=[]",
                         "methods=[vanilla-sd, textual-inversion]", "method_params={{textual-inversion: {{steps: 2, batch_size: 1}}}}",
                         "report.wandb=disabled", "--sweep", "sampler.cfg_scale=5.0,7.5"])
        tracked = {{id(o) for o in gc.get_objects()}}
        print(code, len(loaded), gc.get_freeze_count() > 1000, all(id(c.unet) in tracked for c in loaded))
    """)
    assert out == "0 2 True True"


def test_the_python_api_leaves_the_callers_heap_alone(tiny_model, tmp_path):
    """A library call (`persobench.run`) never freezes: frozen objects are never collected, and a notebook's or a
    test's heap is not the harness's to pin."""
    out = _python(f"""
        import gc
        import persobench
        from persobench.core.config import load_config

        cfg = load_config(None, ["model.source={tiny_model}", "store={tmp_path / 'runs'}", "dataset.subjects=[ball1]",
                                 "dataset.max_prompts=1", "dataset.images_per_prompt=1", "sampler.steps=2",
                                 "metrics.names=[]", "report.wandb=disabled", "methods=[vanilla-sd]"])
        persobench.run(cfg, progress=False)
        print(gc.get_freeze_count())
    """)
    assert out == "0"
