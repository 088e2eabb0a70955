"""The plugin API grows ebmkit: a plugin adds a kind, an `ebmkit eval` task and a command."""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import (
    console_script,
    on_sys_path,
    plugin_listing,
    subprocess_env,
    unique_tag,
    write_distribution,
    write_lines,
)

import ebmkit
import gin
from ebmkit import cli
from ebmkit.cli import main
from ebmkit.commands import BUILTIN_COMMANDS
from ebmkit.errors import UnknownComponentError
from ebmkit.registry import Kind, get_registry, reset_registry

pytestmark = pytest.mark.usefixtures("builtin_registry")

# The flowkit distribution, installed once for this module. Its module name does not start
# with `ebmkit_test_` so no other test module's clean-up drops it: a re-imported module would
# hand gin a second `bijectors.Affine` class, which gin refuses for the rest of the process.
# Its kind is `bijector`: `flow` is a core kind (ebmkit.flows), and a kind is registered once.
FLOWKIT_DIST = "flowkit_for_ebmkit_tests"
FLOWKIT_MODULE = "flowkit_for_ebmkit_tests"
FLOWKIT_SOURCE = '''
    """flowkit: grows ebmkit by a kind (bijector), an eval task (count-files) and a command."""
    import json
    import math
    from pathlib import Path

    import torch
    from torch import nn

    import ebmkit


    def standard_normal_log_prob(z):
        return (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)


    class Affine(nn.Module):
        """Elementwise affine bijector x = shift + exp(log_scale)·z on a standard normal base."""

        def __init__(self, features=1, shift=0.0, log_scale=0.0):
            super().__init__()
            self.shift = nn.Parameter(torch.full((features,), float(shift)))
            self.log_scale = nn.Parameter(torch.full((features,), float(log_scale)))

        def forward(self, z):
            return self.shift + self.log_scale.exp() * z

        def inverse(self, x):
            """(z, log|det dz/dx|) for each row of x."""
            z = (x - self.shift) * torch.exp(-self.log_scale)
            return z, (-self.log_scale.sum()).expand(x.shape[0])

        def log_prob(self, x):
            z, log_det = self.inverse(x)
            return standard_normal_log_prob(z) + log_det


    class Compose(nn.Module):
        """Two bijectors in sequence: x = outer(inner(z))."""

        def __init__(self, inner, outer):
            super().__init__()
            self.inner, self.outer = inner, outer

        def forward(self, z):
            return self.outer(self.inner(z))

        def inverse(self, x):
            y, outer_log_det = self.outer.inverse(x)
            z, inner_log_det = self.inner.inverse(y)
            return z, outer_log_det + inner_log_det

        def log_prob(self, x):
            z, log_det = self.inverse(x)
            return standard_normal_log_prob(z) + log_det


    @ebmkit.hookimpl
    def ebmkit_add_kinds(registry):
        registry.add_kind(
            "bijector", plural="bijectors", doc="invertible maps with a log-density"
        )


    @ebmkit.hookimpl
    def ebmkit_register(registry):
        registry.add("bijector", "Affine", Affine)
        registry.add("bijector", "Compose", Compose)


    def count_files_parser(parser):
        parser.add_argument("--folder", type=Path, required=True, help="the folder to count")
        parser.add_argument("--suffix", default="", help="count only names ending so")
        parser.add_argument("--at-least", type=int, help="exit 3 when fewer files are found")


    def count_files(args):
        if not args.folder.is_dir():
            raise ebmkit.EbmkitError(
                f"--folder {args.folder} is not a folder; pass an existing folder"
            )
        names = [p.name for p in args.folder.iterdir() if p.is_file()]
        count = sum(name.endswith(args.suffix) for name in names)
        print(json.dumps({"folder": str(args.folder), "suffix": args.suffix, "files": count}))
        if args.at_least is not None and count < args.at_least:
            return 3
        return None


    @ebmkit.hookimpl
    def ebmkit_add_eval_tasks(tasks):
        tasks.add(
            "count-files",
            help="count the files of a folder",
            configure_parser=count_files_parser,
            run=count_files,
        )


    def flow_density_parser(parser):
        parser.add_argument("x", type=float, nargs="+", help="points to evaluate")
        parser.add_argument("--shift", type=float, default=0.0)
        parser.add_argument("--log-scale", type=float, default=0.0)


    def flow_density(args):
        flow = ebmkit.create(
            "bijector", "Affine", features=1, shift=args.shift, log_scale=args.log_scale
        )
        with torch.no_grad():
            log_prob = flow.log_prob(torch.tensor(args.x).unsqueeze(-1))
        print(json.dumps({"log_prob": log_prob.tolist()}))


    @ebmkit.hookimpl
    def ebmkit_add_commands(commands):
        commands.add(
            "flow-density",
            help="log-density of an Affine flow at some points",
            configure_parser=flow_density_parser,
            run=flow_density,
        )
'''
FID_FLAGS = (
    "--samples",
    "--reference",
    "--dims",
    "--fid-weights",
    "--random-weights",
    "--batch-size",
    "--device",
    "--save-stats",
)


@pytest.fixture(scope="module")
def flowkit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The flowkit distribution on sys.path for this module's tests; its folder."""
    folder = tmp_path_factory.mktemp("flowkit_site")
    modules = {FLOWKIT_MODULE: FLOWKIT_SOURCE}
    write_distribution(folder, FLOWKIT_DIST, "1.0", {"flowkit": FLOWKIT_MODULE}, modules)
    with on_sys_path(folder, forget=False):
        yield folder


def _site(tmp_path: Path, first: bool) -> Iterator[Path]:
    folder = tmp_path / "site"
    folder.mkdir()
    with on_sys_path(folder, first=first):
        yield folder


@pytest.fixture
def late_site(tmp_path: Path) -> Iterator[Path]:
    """A folder at the end of sys.path: its plugins load after flowkit."""
    yield from _site(tmp_path, first=False)


@pytest.fixture
def early_site(tmp_path: Path) -> Iterator[Path]:
    """A folder at the front of sys.path: its plugins load before flowkit."""
    yield from _site(tmp_path, first=True)


def install(site: Path, kind: str, source: str) -> tuple[str, str]:
    """A one-module distribution in `site`; (entry-point name, a unique tag for names)."""
    tag = unique_tag()
    module = f"ebmkit_test_{kind}_{tag}"
    source = source.replace("TAG", tag)
    write_distribution(site, module, "0.1", {f"{kind}_{tag}": module}, {module: source})
    return f"{kind}_{tag}", tag


def ebmkit_subprocess(site: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """The console script in a fresh process with `site` on PYTHONPATH."""
    command, env = console_script(), subprocess_env(site)
    return subprocess.run([*command, *argv], capture_output=True, text=True, env=env, timeout=120)


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def write_bijector_config(folder: Path, *lines: str) -> Path:
    return write_lines(folder, "bijector.gin", lines)


# -- a new kind ------------------------------------------------------------------------------


def test_a_plugin_kind_is_listed_by_ebmkit_plugins_with_its_components(flowkit: Path) -> None:
    listed = ebmkit_subprocess(flowkit, "plugins")
    assert listed.returncode == 0, listed.stderr
    plugins, sections = plugin_listing(listed.stdout)
    assert plugins["flowkit"] == f"({FLOWKIT_DIST} 1.0): ok"
    assert sections["bijectors"] == {"Affine": "flowkit", "Compose": "flowkit"}
    assert sections["kinds"]["bijector"] == "flowkit"
    assert sections["kinds"]["sampler"] == "ebmkit"
    assert sections["kinds"]["flow"] == "ebmkit"  # the core's kind, beside the plugin's
    assert "  bijector               [flowkit] bijectors.<Name>: invertible maps " in listed.stdout
    assert sections["eval tasks"]["count-files"] == "flowkit"
    assert sections["eval tasks"]["fid"] == "ebmkit"
    assert sections["commands"] == {"flow-density": "flowkit"}
    assert "  Affine                 [flowkit] Elementwise affine bijector" in listed.stdout


def test_the_registry_knows_the_kind_its_plural_and_builds_its_components(flowkit: Path) -> None:
    registry = reset_registry()
    core = ("energy", "sampler", "initializer", "trainer", "dataset", "metric", "flow")
    assert registry.kinds()[: len(core)] == core  # then the plugins' (the repo's and flowkit's)
    assert "bijector" in registry.kinds()
    assert registry.kind("bijector") == Kind(
        "bijector", "bijectors", "invertible maps with a log-density", "flowkit"
    )
    assert (registry.plural("bijector"), registry.plural("energy")) == ("bijectors", "energies")
    assert (registry.kind_of_plural("bijectors"), registry.kind_of_plural("bijector")) == (
        "bijector",
        None,
    )
    component = registry.get("bijector", "Affine")
    assert (component.plugin, component.gin_name) == ("flowkit", "bijectors.Affine")
    bijector = ebmkit.create("bijector", "Affine", features=2, shift=1.0, log_scale=math.log(2.0))
    x = torch.tensor([[1.0, 3.0], [-1.0, 0.5]])
    expected = torch.distributions.Normal(1.0, 2.0).log_prob(x).sum(-1)
    torch.testing.assert_close(bijector.log_prob(x), expected)
    assert [c.name for c in ebmkit.components("bijector")] == ["Affine", "Compose"]
    assert [c.kind for c in ebmkit.components() if c.plugin == "flowkit"] == ["bijector"] * 2


def test_an_unknown_kind_lists_every_kind_including_the_plugins(flowkit: Path) -> None:
    registry = reset_registry()
    kinds = ", ".join(registry.kinds())  # every installed plugin's kinds, flowkit's among them
    assert kinds.startswith("energy, sampler, initializer, trainer, dataset, metric, flow, ")
    assert "bijector" in kinds
    with pytest.raises(
        ValueError, match=f"^unknown component kind 'bjector'; the kinds are {re.escape(kinds)}$"
    ):
        ebmkit.create("bjector", "Affine")
    with pytest.raises(
        UnknownComponentError, match=r"registered bijectors: Affine \(flowkit\), Com"
    ):
        ebmkit.create("bijector", "RealNVP")


def test_a_gin_file_builds_the_new_kinds_components_by_reference(
    flowkit: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_bijector_config(
        tmp_path,
        "bijectors.Compose.inner = @inner/bijectors.Affine()",
        "bijectors.Compose.outer = @outer/bijectors.Affine()",
        "inner/bijectors.Affine.shift = 1.0",
        "outer/bijectors.Affine.log_scale = 0.5",
    )
    status, out, err = run_main(capsys, "config", str(config))
    assert status == 0, err
    assert (
        "\nCompose.inner = @inner/bijectors.Affine()\n"
        "Compose.outer = @outer/bijectors.Affine()\n" in out
    )
    # two configurables end in "Affine" (the core's flows.Affine too): gin writes the module
    assert "\nouter/bijectors.Affine.log_scale = 0.5\n" in out
    bijector = gin.get_configurable("bijectors.Compose")()
    assert (bijector.inner.shift.item(), bijector.inner.log_scale.item()) == (1.0, 0.0)
    assert (bijector.outer.shift.item(), bijector.outer.log_scale.item()) == (0.0, 0.5)
    # x = e^0.5 · (1 + z): a normal with mean and scale e^0.5
    x = torch.linspace(-2.0, 4.0, 7).unsqueeze(-1)
    scale = math.exp(0.5)
    expected = torch.distributions.Normal(scale, scale).log_prob(x).squeeze(-1)
    torch.testing.assert_close(bijector.log_prob(x), expected)
    z = torch.randn(5, 1)
    torch.testing.assert_close(bijector.inverse(bijector(z))[0], z)


def test_a_config_error_in_the_new_kind_lists_its_components_and_parameters(
    flowkit: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_bijector_config(tmp_path, "bijectors.Compose.inner = @bijectors.Afine()")
    status, _, err = run_main(capsys, "config", str(config))
    assert status == 1
    assert err.startswith(f"ebmkit: error: in config {config}: ")
    assert "\nregistered bijectors: bijectors.Affine (flowkit), bijectors.Compose (flowkit)" in err
    config = write_bijector_config(tmp_path, "bijectors.Affine.scale = 2.0")
    status, _, err = run_main(capsys, "config", str(config))
    assert status == 1
    assert "\nits parameters are: features, shift, log_scale" in err
    config = write_bijector_config(tmp_path, "bijectorz.Compose.inner = 1")
    status, _, err = run_main(capsys, "config", str(config))
    assert status == 1
    registry = reset_registry()
    plurals = sorted(registry.plural(kind) for kind in registry.kinds())
    assert "bijectors" in plurals
    assert f"kinds one of {plurals}" in err


# -- eval tasks and commands -----------------------------------------------------------------


def test_eval_help_lists_every_task_and_a_tasks_help_shows_its_flags(flowkit: Path) -> None:
    listing = ebmkit_subprocess(flowkit, "eval", "--help")
    assert listing.returncode == 0, listing.stderr
    words = " ".join(listing.stdout.split())  # argparse wraps to the terminal's width
    assert " count-files count the files of a folder [plugin flowkit] " in words
    assert " fid Fréchet Inception Distance between two image sets " in words
    task = ebmkit_subprocess(flowkit, "eval", "count-files", "--help")
    assert task.returncode == 0, task.stderr
    assert " ".join(task.stdout.split()).startswith("usage: ebmkit eval count-files [-h] --fold")
    for flag in ("--folder FOLDER", "--suffix SUFFIX", "--at-least AT_LEAST"):
        assert flag in task.stdout


def test_an_eval_task_runs_with_its_flags_and_returns_its_status(
    flowkit: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("a.png", "b.png", "notes.txt"):
        (tmp_path / name).write_text(name)
    (tmp_path / "sub").mkdir()
    status, out, _ = run_main(capsys, "eval", "count-files", "--folder", str(tmp_path))
    assert status == 0
    assert json.loads(out) == {"folder": str(tmp_path), "suffix": "", "files": 3}
    argv = ["eval", "count-files", "--folder", str(tmp_path), "--suffix", ".png"]
    status, out, _ = run_main(capsys, *argv)
    assert (status, json.loads(out)["files"]) == (0, 2)
    status, out, _ = run_main(capsys, *argv, "--at-least", "3")
    assert (status, json.loads(out)["files"]) == (3, 2)


def test_an_ebmkit_error_inside_a_task_is_one_error_line(
    flowkit: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing"
    status, out, err = run_main(capsys, "eval", "count-files", "--folder", str(missing))
    assert (status, out) == (1, "")
    assert err == f"ebmkit: error: --folder {missing} is not a folder; pass an existing folder\n"


def test_a_plugin_command_runs_and_is_listed_by_ebmkit_help(
    flowkit: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_main(capsys, "flow-density", "--shift", "1", "--log-scale", "0", "1", "3")
    assert status == 0
    expected = torch.distributions.Normal(1.0, 1.0).log_prob(torch.tensor([1.0, 3.0]))
    assert json.loads(out)["log_prob"] == pytest.approx(expected.tolist())
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    words = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    assert "{run,sample,eval,plugins,config,flow-density}" in words
    assert " flow-density log-density of an Affine flow at some points [plugin flowkit] " in words


def test_fid_is_an_eval_task_of_the_builtin_plugin_with_its_flags(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fid = get_registry().eval_tasks.get("fid")
    assert fid.plugin == "ebmkit"
    with pytest.raises(SystemExit) as exited:
        main(["eval", "fid", "--help"])
    assert exited.value.code == 0
    usage = capsys.readouterr().out
    for flag in FID_FLAGS:
        assert f"  {flag}" in usage
    status, out, err = run_main(capsys, "eval", "fid", "--samples", "nope", "--reference", "x")
    assert (status, out) == (1, "")
    assert err == "ebmkit: error: nope does not exist (give a folder of images or an .npz)\n"


def test_the_reserved_command_names_are_the_clis_own_commands() -> None:
    registry = reset_registry(autoload=False)
    parser = cli._parser(registry)
    (subcommands,) = [a for a in parser._actions if a.dest == "command"]
    assert set(subcommands.choices) == set(BUILTIN_COMMANDS)


def test_blocking_the_plugin_takes_its_kind_task_and_command_away(
    flowkit: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reset_registry()  # flowkit's components become gin configurables
    status, out, _ = run_main(capsys, "-p", "no:flowkit", "plugins")
    assert status == 0
    plugins, sections = plugin_listing(out)
    assert plugins["flowkit"].endswith(": blocked")
    assert "bijector" not in sections["kinds"] and "bijectors" not in sections
    assert sections["kinds"]["flow"] == "ebmkit"  # the core's flows stay
    assert "count-files" not in sections["eval tasks"] and "commands" not in sections
    with pytest.raises(SystemExit) as exited:
        main(["-p", "no:flowkit", "eval", "count-files", "--folder", "."])
    assert exited.value.code == 2
    assert "invalid choice: 'count-files'" in capsys.readouterr().err
    with pytest.raises(UnknownComponentError, match="unknown component kind 'bijector'"):
        gin.get_configurable("bijectors.Affine")()


# -- ordering, clashes and broken plugins ----------------------------------------------------


def test_a_plugin_loaded_before_the_kinds_plugin_can_add_components_of_it(
    flowkit: Path, early_site: Path
) -> None:
    name, tag = install(
        early_site,
        "early",
        '''
import ebmkit
from torch import nn


class ShiftTAG(nn.Module):
    """x + 1."""

    def forward(self, x):
        return x + 1


@ebmkit.hookimpl
def ebmkit_register(registry):
    registry.add("bijector", "ShiftTAG", ShiftTAG)
''',
    )
    registry = reset_registry()
    assert list(registry.plugins).index(name) < list(registry.plugins).index("flowkit")
    assert registry.plugins[name].ok
    assert registry.get("bijector", f"Shift{tag}").plugin == name
    assert gin.get_configurable(f"bijectors.Shift{tag}")()(torch.zeros(1)).item() == 1.0


CLASHES = {
    "kind": (
        "ebmkit_add_kinds",
        'registry.add_kind("bijector")',
        "ebmkit_add_kinds failed: ValueError: kind 'bijector' is registered twice: by plugin "
        "'flowkit' and by 'PLUGIN'; rename one, or block one with -p no:NAME",
    ),
    "builtin kind": (
        "ebmkit_add_kinds",
        'registry.add_kind("sampler")',
        "kind 'sampler' is registered twice: by plugin 'ebmkit' and by 'PLUGIN'",
    ),
    "plural": (
        "ebmkit_add_kinds",
        'registry.add_kind("stream", plural="bijectors")',
        "kind 'stream' (plural 'bijectors') of plugin 'PLUGIN' clashes with kind 'bijector' "
        "(plural 'bijectors') of plugin 'flowkit'; choose another name or plural=",
    ),
    "kind name": (
        "ebmkit_add_kinds",
        'registry.add_kind("Flow Model")',
        "kind 'Flow Model' of plugin 'PLUGIN' is not a lower-case identifier",
    ),
    "late kind": (
        "ebmkit_register",
        'registry.add_kind("late")',
        "ebmkit_register failed: ValueError: kind 'late' of plugin 'PLUGIN' is added too late: "
        "add kinds in the ebmkit_add_kinds hook",
    ),
    "task": (
        "ebmkit_add_eval_tasks",
        'tasks.add("count-files", help="mine", configure_parser=lambda p: None, run=print)',
        "ebmkit_add_eval_tasks failed: ValueError: eval task 'count-files' is registered "
        "twice: by plugin 'flowkit' and by 'PLUGIN'; rename one, or block one with -p no:NAME",
    ),
    "builtin task": (
        "ebmkit_add_eval_tasks",
        'tasks.add("fid", help="mine", configure_parser=lambda p: None, run=print)',
        "eval task 'fid' is registered twice: by plugin 'ebmkit' and by 'PLUGIN'",
    ),
    "command": (
        "ebmkit_add_commands",
        'commands.add("flow-density", help="mine", configure_parser=lambda p: None, run=print)',
        "ebmkit_add_commands failed: ValueError: command 'flow-density' is registered twice: "
        "by plugin 'flowkit' and by 'PLUGIN'",
    ),
    "builtin command": (
        "ebmkit_add_commands",
        'commands.add("run", help="mine", configure_parser=lambda p: None, run=print)',
        "command 'run' of plugin 'PLUGIN' takes the name of ebmkit's own command (ebmkit's are "
        "run, sample, eval, plugins, config); rename it",
    ),
    "flag destination": (
        "ebmkit_add_commands",
        'commands.add("mine", help="mine", configure_parser=lambda p: p.add_argument("--task"),'
        " run=print)",
        "command 'mine' of plugin 'PLUGIN' defines flags stored as ['task'], which the ebmkit "
        "command reads itself; pass dest= another name",
    ),
    "parser": (
        "ebmkit_add_eval_tasks",
        'tasks.add("mine", help="mine", configure_parser=lambda p: p.add_argument("-h"),'
        " run=print)",
        "eval task 'mine' of plugin 'PLUGIN': configure_parser failed: ArgumentError: ",
    ),
}


@pytest.mark.parametrize("clash", sorted(CLASHES))
def test_a_clash_breaks_the_later_plugin_naming_both_and_keeps_the_first(
    clash: str, flowkit: Path, late_site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hook, call, expected = CLASHES[clash]
    argument = call.partition(".")[0]  # registry, commands or tasks: the hook's parameter
    source = f"import ebmkit\n\n\n@ebmkit.hookimpl\ndef {hook}({argument}):\n    {call}\n"
    if hook != "ebmkit_add_kinds":
        source += (
            '\n\n@ebmkit.hookimpl\ndef ebmkit_add_kinds(registry):\n    registry.add_kind("x")\n'
        )
    name, _ = install(late_site, "clash", source)
    registry = reset_registry()
    error = registry.plugins[name].error
    assert error is not None and expected.replace("PLUGIN", name) in error
    assert "x" not in registry.kinds()  # what the broken plugin added is gone
    assert registry.plugins["flowkit"].ok
    assert registry.plural("bijector") == "bijectors"
    assert registry.eval_tasks.get("count-files").plugin == "flowkit"
    assert registry.commands.get("flow-density").plugin == "flowkit"
    status, out, _ = run_main(capsys, "plugins")
    assert status == 0
    plugins, _ = plugin_listing(out)
    assert plugins[name] == f"(ebmkit_test_{name} 0.1): BROKEN: {error}"


def test_a_plugin_failing_in_a_later_hook_loses_its_kind_components_command_and_task(
    flowkit: Path, late_site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, tag = install(
        late_site,
        "halfway",
        '''
import ebmkit


class GenTAG:
    """A generator whose plugin then fails."""


@ebmkit.hookimpl
def ebmkit_add_kinds(registry):
    registry.add_kind("decoder", doc="maps latents to samples")


@ebmkit.hookimpl
def ebmkit_register(registry):
    registry.add("decoder", "GenTAG", GenTAG)
    registry.add("bijector", "BijectorTAG", GenTAG)


@ebmkit.hookimpl
def ebmkit_add_commands(commands):
    commands.add("gen-TAG", help="generate", configure_parser=lambda p: None, run=print)


@ebmkit.hookimpl
def ebmkit_add_eval_tasks(tasks):
    tasks.add("gen-TAG", help="evaluate", configure_parser=lambda p: None, run=print)
    raise RuntimeError("no evaluation today")
''',
    )
    registry = reset_registry()
    error = "ebmkit_add_eval_tasks failed: RuntimeError: no evaluation today"
    assert registry.plugins[name].error == error
    assert "decoder" not in registry.kinds()
    assert f"Bijector{tag}" not in [c.name for c in registry.components("bijector")]
    assert f"gen-{tag}" not in registry.commands and f"gen-{tag}" not in registry.eval_tasks
    status, out, _ = run_main(capsys, "plugins")
    assert status == 0
    plugins, sections = plugin_listing(out)
    assert plugins[name] == f"(ebmkit_test_{name} 0.1): BROKEN: {error}"
    assert "decoder" not in sections["kinds"] and "decoders" not in sections
    assert sections["bijectors"] == {"Affine": "flowkit", "Compose": "flowkit"}
    assert f"gen-{tag}" not in sections["eval tasks"]
    with pytest.raises(SystemExit):
        main(["eval", f"gen-{tag}"])
    assert f"invalid choice: 'gen-{tag}'" in capsys.readouterr().err
    # its components, already gin configurables, refuse to build and say why
    with pytest.raises(UnknownComponentError) as caught:
        gin.get_configurable(f"decoders.Gen{tag}")()
    message = str(caught.value)
    assert message.startswith("unknown component kind 'decoder'; the kinds are energy, ")
    assert f"\nplugin {name!r} is broken and its kinds skipped: {error}" in message
