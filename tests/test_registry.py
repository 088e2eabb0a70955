"""The plugin registry: built-in components, gin names, entry-point discovery, broken plugins."""

from __future__ import annotations

import importlib.metadata
import inspect
import math
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import (
    TOY_GIN,
    console_script,
    on_sys_path,
    plugin_listing,
    subprocess_env,
    unique_tag,
    write_distribution,
)

import ebmkit
import gin
from ebmkit.cli import main
from ebmkit.data.toy import TOY_DATASETS
from ebmkit.energies.conv import ConvEnergy
from ebmkit.energies.mlp import MLPEnergy
from ebmkit.errors import UnknownComponentError
from ebmkit.initializers.data import Data
from ebmkit.initializers.noise import Noise
from ebmkit.initializers.replay import Replay
from ebmkit.registry import (
    AUTOLOAD_ENV,
    PluginInfo,
    build_registry,
    get_registry,
    reset_registry,
)
from ebmkit.samplers.langevin import Langevin
from ebmkit.samplers.mala import MALA
from ebmkit.trainers.contrastive import Contrastive

pytestmark = pytest.mark.usefixtures("builtin_registry")

BUILTINS: dict[str, dict[str, object]] = {
    "sampler": {"Langevin": Langevin, "MALA": MALA},
    "initializer": {"Noise": Noise, "Data": Data, "Replay": Replay},
    "energy": {"MLP": MLPEnergy, "Conv": ConvEnergy},
    "trainer": {"Contrastive": Contrastive},
    "dataset": dict(TOY_DATASETS),
}
TOY_SET_NAMES = {
    "EightGaussians",
    "GaussianMixture",
    "Rings",
    "Checkerboard",
    "TwoMoons",
    "Pinwheel",
    "SwissRoll",
}
BUILTIN_PAIRS = [(kind, name) for kind, names in BUILTINS.items() for name in names]

# The demo distribution: installed once for this module (its class must stay one object,
# because gin keeps `samplers.DemoLangevin` for the whole process).
DEMO_DIST = "ebmkit_test_demo_dist"
DEMO_MODULE = "ebmkit_test_demo_plugin"
DEMO_VERSION = "2.5.1"
DEMO_SOURCE = '''
    """A third-party ebmkit plugin, as a distribution would ship it."""
    import attrs

    import ebmkit
    from ebmkit.samplers.langevin import Langevin


    @attrs.define(kw_only=True)
    class DemoLangevin(Langevin):
        """Langevin, shipped by the demo plugin."""


    @ebmkit.hookimpl
    def ebmkit_register(registry):
        registry.add("sampler", "DemoLangevin", DemoLangevin)
'''


@pytest.fixture(scope="module")
def demo_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The demo distribution on sys.path for this module's tests, removed afterwards."""
    site = tmp_path_factory.mktemp("demo_site")
    write_distribution(
        site, DEMO_DIST, DEMO_VERSION, {"demo": DEMO_MODULE}, {DEMO_MODULE: DEMO_SOURCE}
    )
    with on_sys_path(site):
        yield site


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    """A per-test folder on sys.path for more distributions; removed (and forgotten) after."""
    folder = tmp_path / "site"
    folder.mkdir()
    with on_sys_path(folder):
        yield folder


@pytest.fixture
def broken_plugin(site: Path) -> tuple[str, str, Path]:
    """A distribution whose module fails to import; returns (entry name, dist, import log)."""
    tag = unique_tag()
    name, dist, module = f"broken_{tag}", f"ebmkit_test_broken_{tag}", f"ebmkit_test_broken_{tag}"
    log = site / f"{module}.imports"
    source = f"""
        from pathlib import Path

        with Path({str(log)!r}).open("a") as log:
            log.write("imported\\n")
        import ebmkit_no_such_dependency_{tag}  # the plugin's missing dependency
    """
    write_distribution(site, dist, "0.3", {name: module}, {module: source})
    return name, dist, log


def import_count(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def installed(kind: str, *blocked: str) -> dict[str, str]:
    """{name: plugin} of `kind` as installed here, without the demo and the `blocked` plugins.

    Other distributions in the environment may add components; the tests expect exactly those
    plus the ones they install themselves.
    """
    registry = build_registry(blocked=["demo", *blocked])
    return {c.name: c.plugin for c in registry.components(kind)}


def section_of(sections: dict[str, dict[str, str]], kind: str) -> dict[str, str]:
    """The listing of `kind`, under its gin plural ("energies", "samplers", ...)."""
    plural = get_registry().plural(kind)
    assert plural in sections, f"no section {plural!r} in {sorted(sections)}"
    return sections[plural]


# -- built-in components ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BUILTINS))
def test_builtin_components_are_registered_by_the_ebmkit_plugin(kind: str) -> None:
    found = {c.name: c for c in ebmkit.components(kind)}
    assert set(BUILTINS[kind]) <= set(found)
    for name, factory in BUILTINS[kind].items():
        assert found[name].kind == kind
        assert found[name].plugin == "ebmkit"
        assert found[name].factory is factory


def test_every_toy_dataset_and_the_toy_metrics_are_registered() -> None:
    datasets = {c.name: c.plugin for c in ebmkit.components("dataset")}
    assert {name: datasets.get(name) for name in TOY_SET_NAMES} == dict.fromkeys(
        TOY_SET_NAMES, "ebmkit"
    )
    metrics = {c.name: c.plugin for c in ebmkit.components("metric")}
    for name in ("grid_kl", "mmd", "sliced_wasserstein", "mode_weights", "log_likelihood"):
        assert metrics[name] == "ebmkit"


def test_the_builtin_plugin_reports_ebmkits_distribution_and_version() -> None:
    info = get_registry().plugins["ebmkit"]
    assert info == PluginInfo("ebmkit", "ebmkit", importlib.metadata.version("ebmkit"))
    assert info.ok


def test_components_are_sorted_by_kind_then_name() -> None:
    listed = [(c.kind, c.name) for c in ebmkit.components()]
    order = {kind: number for number, kind in enumerate(get_registry().kinds())}
    assert listed == sorted(listed, key=lambda pair: (order[pair[0]], pair[1]))
    assert set(BUILTIN_PAIRS) <= set(listed)


def test_create_builds_a_langevin_sampler_with_the_given_arguments() -> None:
    sampler = ebmkit.create("sampler", "Langevin", step_size=0.1)
    assert type(sampler) is Langevin
    assert sampler.step_size == 0.1
    assert sampler.noise_scale == math.sqrt(0.2)
    assert sampler.n_steps == 100


def test_create_builds_energies_and_datasets() -> None:
    torch.manual_seed(0)
    energy = ebmkit.create("energy", "MLP", in_features=2, hidden=(16, 16))
    assert isinstance(energy, MLPEnergy)
    assert energy(torch.zeros(5, 2)).shape == (5,)
    dataset = ebmkit.create("dataset", "EightGaussians", n_samples=64, seed=3)
    assert len(dataset) == 64
    assert torch.equal(dataset.points, TOY_DATASETS["EightGaussians"](64, 3).points)


@pytest.mark.parametrize(("kind", "name"), [("sampler", "Langvin"), ("energy", "Transformer")])
def test_an_unknown_name_lists_the_registered_components_of_that_kind(
    kind: str, name: str
) -> None:
    with pytest.raises(UnknownComponentError) as caught:
        ebmkit.create(kind, name, step_size=0.1)
    message = str(caught.value)
    registered = ", ".join(f"{c.name} ({c.plugin})" for c in ebmkit.components(kind))
    assert message.split("\n")[0] == f"unknown {kind} {name!r}; registered {kind}s: {registered}"
    for builtin in BUILTINS[kind]:
        assert f"{builtin} (ebmkit)" in message
    other_kind = "energy" if kind == "sampler" else "sampler"
    for other in BUILTINS[other_kind]:
        assert f"{other} (" not in message
    assert isinstance(caught.value, KeyError)  # `except KeyError` callers keep working


def test_an_unknown_kind_names_the_kinds() -> None:
    with pytest.raises(ValueError, match="unknown component kind 'samplr'; the kinds are energy"):
        ebmkit.create("samplr", "Langevin")


# -- gin names -------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "name"), BUILTIN_PAIRS)
def test_each_component_is_the_gin_configurable_plural_dot_name(kind: str, name: str) -> None:
    component = get_registry().get(kind, name)
    expected = {
        "sampler": f"samplers.{name}",
        "initializer": f"initializers.{name}",
        "energy": f"energies.{name}",
        "trainer": f"trainers.{name}",
        "dataset": f"datasets.{name}",
    }[kind]
    assert component.gin_name == expected
    configurable = gin.get_configurable(expected)
    factory = component.factory
    # gin may wrap the factory (a subclass, or a function with __wrapped__)
    assert inspect.unwrap(configurable) is factory or (
        isinstance(configurable, type) and issubclass(configurable, factory)
    )


def test_gin_bindings_reach_the_components_through_their_gin_names() -> None:
    get_registry()  # building the registry makes the components gin configurables
    gin.clear_config()
    gin.parse_config(
        textwrap.dedent(
            """
            samplers.Langevin.step_size = 0.25
            samplers.Langevin.n_steps = 7
            energies.MLP.hidden = (16, 16)
            initializers.Replay.noise = @initializers.Noise()
            initializers.Replay.capacity = 12
            initializers.Noise.shape = (2,)
            datasets.EightGaussians.n_samples = 40
            """
        )
    )
    sampler = gin.get_configurable("samplers.Langevin")()
    assert isinstance(sampler, Langevin)
    assert (sampler.step_size, sampler.n_steps) == (0.25, 7)
    energy = gin.get_configurable("energies.MLP")()
    assert [layer.out_features for layer in energy.net if hasattr(layer, "out_features")] == [
        16,
        16,
        1,
    ]
    replay = gin.get_configurable("initializers.Replay")()
    assert isinstance(replay.noise, Noise)
    assert replay.capacity == 12
    assert len(gin.get_configurable("datasets.EightGaussians")()) == 40


# -- `ebmkit plugins` ------------------------------------------------------------------------


def test_plugins_command_lists_every_builtin_with_its_plugin(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["plugins"]) == 0
    output = capsys.readouterr().out
    plugins, sections = plugin_listing(output)
    version = importlib.metadata.version("ebmkit")
    assert plugins["ebmkit"] == f"(ebmkit {version}): ok"
    for kind, names in BUILTINS.items():
        listed = section_of(sections, kind)
        assert {name: listed.get(name) for name in names} == dict.fromkeys(names, "ebmkit")
    assert re.search(r"^  Langevin +\[ebmkit\] Unadjusted Langevin: ", output, re.MULTILINE)
    assert re.search(r"^  MALA +\[ebmkit\] MALA: propose ", output, re.MULTILINE)


def test_plugins_command_headings_are_the_gin_plurals(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    _, sections = plugin_listing(capsys.readouterr().out)
    assert {"energies", "samplers", "initializers", "trainers", "datasets", "metrics"} <= set(
        sections
    )
    assert not any(heading.endswith("ys") for heading in sections)  # no "energys"


def test_a_bad_plugin_option_is_one_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-p", "demo", "plugins"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "ebmkit: error: -p takes no:NAME to block a plugin, got -p 'demo'\n"


# -- discovery of installed distributions ----------------------------------------------------


def test_an_installed_distribution_is_discovered_through_its_entry_point(
    demo_site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = reset_registry()
    assert registry.plugins["demo"] == PluginInfo("demo", DEMO_DIST, DEMO_VERSION)
    component = registry.get("sampler", "DemoLangevin")
    assert component.plugin == "demo"
    assert component.gin_name == "samplers.DemoLangevin"
    demo_class = sys.modules[DEMO_MODULE].DemoLangevin
    assert component.factory is demo_class
    sampler = ebmkit.create("sampler", "DemoLangevin", step_size=0.1, n_steps=2)
    assert isinstance(sampler, demo_class) and isinstance(sampler, Langevin)
    assert sampler.sample(lambda x: 0.5 * x.square().sum(1), torch.zeros(3, 2)).x.shape == (3, 2)
    # the built-ins are still there, and still the built-in plugin's
    assert {c.name: c.plugin for c in ebmkit.components("sampler")} == {
        **installed("sampler"),
        "DemoLangevin": "demo",
    }
    # the CLI lists it, and an unknown sampler's message names it
    assert main(["plugins"]) == 0
    plugins, sections = plugin_listing(capsys.readouterr().out)
    assert plugins["demo"] == f"({DEMO_DIST} {DEMO_VERSION}): ok"
    assert section_of(sections, "sampler")["DemoLangevin"] == "demo"
    listed = r"DemoLangevin \(demo\), .*Langevin \(ebmkit\)"
    with pytest.raises(UnknownComponentError, match=listed):
        ebmkit.create("sampler", "Nope")


def write_demo_config(folder: Path) -> Path:
    config = folder / "demo.gin"
    config.write_text(
        textwrap.dedent(
            f"""\
            include '{TOY_GIN}'
            trainers.Contrastive.dataset = @datasets.EightGaussians()
            trainers.Contrastive.sampler = @samplers.DemoLangevin()
            trainers.Contrastive.initializer = @initializers.Noise()
            trainers.Contrastive.batch_size = 32
            trainers.Contrastive.n_rounds = 2
            energies.MLP.hidden = (16, 16)
            datasets.EightGaussians.n_samples = 64
            samplers.DemoLangevin.step_size = 0.01
            samplers.DemoLangevin.n_steps = 2
            """
        )
    )
    return config


def test_a_plugin_component_trains_from_a_gin_config(
    demo_site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_demo_config(tmp_path)
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out)]) == 0
    capsys.readouterr()
    operative = (out / "operative_config.gin").read_text()
    assert "Contrastive.sampler = @samplers.DemoLangevin()" in operative
    assert "DemoLangevin.step_size = 0.01" in operative
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["round-00000002.pt"]


def test_a_blocked_plugin_cannot_be_used_by_a_config(demo_site: Path, tmp_path: Path) -> None:
    """End to end: the console script, the demo distribution on PYTHONPATH, -p no:demo."""
    config = write_demo_config(tmp_path)
    command = console_script()
    env = subprocess_env(demo_site)
    out = tmp_path / "blocked"
    blocked = subprocess.run(
        [*command, "-p", "no:demo", "run", str(config), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert blocked.returncode == 1, blocked.stderr
    assert blocked.stdout == ""
    assert blocked.stderr.startswith(f"ebmkit: error: in config {config}: ")
    assert "No configurable matching reference '@samplers.DemoLangevin()'" in blocked.stderr
    assert "line 3\n    trainers.Contrastive.sampler = @samplers.DemoLangevin()" in blocked.stderr
    registered = ", ".join(f"samplers.{n} ({p})" for n, p in installed("sampler").items())
    assert f"\nregistered samplers: {registered}" in blocked.stderr
    assert "Traceback" not in blocked.stderr
    assert not out.exists()
    listed = subprocess.run(
        [*command, "plugins"], capture_output=True, text=True, env=env, timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    plugins, sections = plugin_listing(listed.stdout)
    assert plugins["demo"] == f"({DEMO_DIST} {DEMO_VERSION}): ok"
    assert section_of(sections, "sampler")["DemoLangevin"] == "demo"


def test_in_process_blocking_also_hides_the_plugins_gin_configurables(
    demo_site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reset_registry()  # the demo plugin is imported: its configurables are in gin
    config = write_demo_config(tmp_path)
    assert main(["-p", "no:demo", "run", str(config), "--out", str(tmp_path / "other")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("ebmkit: error: unknown sampler 'DemoLangevin'; ")
    assert "\nplugin 'demo' is blocked (-p no:demo)" in captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "other").exists()
    # unblocked again, the same config builds
    reset_registry()
    assert gin.get_configurable("samplers.DemoLangevin")(step_size=0.5).step_size == 0.5


def test_a_broken_plugin_is_recorded_and_does_not_stop_the_others(
    demo_site: Path, broken_plugin: tuple[str, str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    name, dist, log = broken_plugin
    tag = name.removeprefix("broken_")
    cause = f"ModuleNotFoundError: No module named 'ebmkit_no_such_dependency_{tag}'"
    registry = reset_registry()
    assert import_count(log) == 1
    assert registry.plugins[name] == PluginInfo(name, dist, "0.3", error=cause)
    assert not registry.plugins[name].ok
    assert registry.broken_plugins() == [registry.plugins[name]]
    # the demo plugin and the built-ins are unaffected
    assert registry.plugins["demo"].ok
    assert registry.get("sampler", "DemoLangevin").plugin == "demo"
    assert {(c.kind, c.name) for c in registry.components()} >= set(BUILTIN_PAIRS)
    # an unknown component's message says which plugin failed and why
    with pytest.raises(UnknownComponentError) as caught:
        ebmkit.create("sampler", "BrokenSampler")
    assert str(caught.value).endswith(
        f"\nplugin {name!r} failed to import and is skipped: {cause}"
    )
    # `ebmkit plugins` shows it as BROKEN with the error, and still lists everything else
    assert main(["plugins"]) == 0
    plugins, sections = plugin_listing(capsys.readouterr().out)
    assert plugins[name] == f"({dist} 0.3): BROKEN: {cause}"
    assert plugins["demo"] == f"({DEMO_DIST} {DEMO_VERSION}): ok"
    assert section_of(sections, "sampler") == {
        **installed("sampler", name),
        "DemoLangevin": "demo",
    }
    assert import_count(log) == 2


def test_a_config_naming_a_missing_component_mentions_the_broken_plugin(
    broken_plugin: tuple[str, str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, _, _ = broken_plugin
    config = tmp_path / "uses_broken.gin"
    config.write_text(
        "trainers.Contrastive.batch_size = 32\ntrainers.Contrastive.sampler = @samplers.Broken()\n"
    )
    assert main(["config", str(config)]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"ebmkit: error: in config {config}: ")
    assert f"\nplugin {name!r} failed to import: ModuleNotFoundError: " in error
    assert "line 2\n    trainers.Contrastive.sampler = @samplers.Broken()" in error
    registered = ", ".join(f"{c.gin_name} ({c.plugin})" for c in ebmkit.components("sampler"))
    assert f"\nregistered samplers: {registered}\n" in error


def test_blocking_a_broken_plugin_skips_its_import(
    demo_site: Path, broken_plugin: tuple[str, str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    name, dist, log = broken_plugin
    registry = reset_registry(blocked=[name])
    assert registry.plugins[name] == PluginInfo(name, dist, "0.3", blocked=True)
    assert registry.broken_plugins() == []
    assert import_count(log) == 0
    assert main(["-p", f"no:{name}", "plugins"]) == 0
    plugins, _ = plugin_listing(capsys.readouterr().out)
    assert plugins[name] == f"({dist} 0.3): blocked"
    assert plugins["demo"] == f"({DEMO_DIST} {DEMO_VERSION}): ok"
    assert import_count(log) == 0
    # blocking the demo plugin takes its component away, and leaves the built-ins
    assert main(["-p", "no:demo", "-p", f"no:{name}", "plugins"]) == 0
    plugins, sections = plugin_listing(capsys.readouterr().out)
    assert plugins["demo"] == f"({DEMO_DIST} {DEMO_VERSION}): blocked"
    assert section_of(sections, "sampler") == installed("sampler", name)
    assert {"Langevin": "ebmkit", "MALA": "ebmkit"}.items() <= installed("sampler", name).items()
    assert import_count(log) == 0


def test_the_environment_variable_disables_entry_point_loading(
    demo_site: Path,
    broken_plugin: tuple[str, str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name, _, log = broken_plugin
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    registry = reset_registry()
    assert list(registry.plugins) == ["ebmkit"]
    assert {c.name for c in registry.components("sampler")} == {"Composite", "Langevin", "MALA"}
    assert main(["plugins"]) == 0
    plugins, sections = plugin_listing(capsys.readouterr().out)
    assert list(plugins) == ["ebmkit"]
    assert "DemoLangevin" not in section_of(sections, "sampler")
    assert import_count(log) == 0
    # an explicit autoload=True still loads them; unset, the variable's default is autoload
    assert "demo" in reset_registry(autoload=True).plugins
    monkeypatch.delenv(AUTOLOAD_ENV)
    registry = reset_registry()
    assert registry.plugins["demo"].ok and name in registry.plugins


def _hook_failure_plugin(site: Path) -> tuple[str, str]:
    """A plugin whose ebmkit_register adds a sampler, then raises; (entry name, sampler)."""
    tag = unique_tag()
    module = f"ebmkit_test_hookfail_{tag}"
    sampler = f"HalfRegistered{tag}"
    source = f"""
        import ebmkit
        from ebmkit.samplers.langevin import Langevin


        class {sampler}(Langevin):
            \"\"\"Registered by a plugin whose hook then fails.\"\"\"


        @ebmkit.hookimpl
        def ebmkit_register(registry):
            registry.add("sampler", "{sampler}", {sampler})
            raise RuntimeError("registration failed")
    """
    write_distribution(site, module, "0.1", {f"hookfail_{tag}": module}, {module: source})
    return f"hookfail_{tag}", sampler


def test_a_plugin_failing_in_its_register_hook_is_recorded_as_broken(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, sampler = _hook_failure_plugin(site)
    registry = reset_registry()
    error = "ebmkit_register failed: RuntimeError: registration failed"
    assert registry.plugins[name].error == error
    assert [c.name for c in registry.components("sampler") if c.name == sampler] == []
    assert main(["plugins"]) == 0
    plugins, sections = plugin_listing(capsys.readouterr().out)
    assert plugins[name] == f"(ebmkit_test_{name} 0.1): BROKEN: {error}"
    listed = section_of(sections, "sampler")
    assert listed == {c.name: c.plugin for c in get_registry().components("sampler")}
    assert sampler not in listed and listed["Langevin"] == "ebmkit"
    # what it registered before failing is not usable from a config either
    with pytest.raises(UnknownComponentError, match=f"unknown sampler '{sampler}'"):
        gin.get_configurable(f"samplers.{sampler}")(step_size=0.1)


def test_a_plugin_failing_in_its_register_hook_can_be_blocked(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, _ = _hook_failure_plugin(site)
    assert main(["-p", f"no:{name}", "plugins"]) == 0
    plugins, _ = plugin_listing(capsys.readouterr().out)
    assert plugins[name].endswith(": blocked")


def test_a_plugin_reusing_a_builtin_name_is_broken_and_the_builtin_stays(site: Path) -> None:
    """In a fresh process (in this one gin already knows samplers.Langevin)."""
    tag = unique_tag()
    module = f"ebmkit_test_duplicate_{tag}"
    source = """
        import ebmkit
        from ebmkit.samplers.langevin import Langevin


        class MyLangevin(Langevin):
            \"\"\"A plugin's own Langevin, under the built-in's name.\"\"\"


        @ebmkit.hookimpl
        def ebmkit_register(registry):
            registry.add("sampler", "Langevin", MyLangevin)
    """
    write_distribution(site, module, "0.1", {f"duplicate_{tag}": module}, {module: source})
    command = console_script()
    env = subprocess_env(site)
    listed = subprocess.run(
        [*command, "plugins"], capture_output=True, text=True, env=env, timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    plugins, sections = plugin_listing(listed.stdout)
    assert "BROKEN" in plugins[f"duplicate_{tag}"]
    assert "registered twice" in plugins[f"duplicate_{tag}"]
    assert section_of(sections, "sampler")["Langevin"] == "ebmkit"
