r"""gin config parsing with one clear message per mistake (file, line, the valid choices)."""

from __future__ import annotations

import inspect
import linecache
import logging
import re
import shlex
import tokenize
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

import gin
from ebmkit.errors import ConfigError
from ebmkit.registry import Registry, get_registry

__all__ = [
    "build_configured",
    "check_binding_syntax",
    "explain_build_error",
    "parse_config",
    "set_rounds",
    "unused_bindings",
]

_UNKNOWN_CONFIGURABLE = re.compile(r"No configurable matching (?:reference )?'@?([\w.]+)")
_UNKNOWN_PARAMETER = re.compile(r"Configurable '([\w.]+)' doesn't have a parameter named")


def parse_config(
    config: Path, bindings: Sequence[str] = (), registry: Registry | None = None
) -> None:
    """Clear gin, then parse `config` and `bindings` (skip_unknown=False) into it.

    `include` lines resolve against the config's own folder, so gin/x.gin can include
    `base/toy.gin`. Raises ConfigError naming the file, the line and what would be valid.
    """
    import ebmkit.runs.experiment  # noqa: F401 - registers `experiment`, which every config binds

    registry = registry or get_registry()
    if not config.is_file():
        shipped = sorted(str(p) for p in Path("gin").glob("*.gin")) if Path("gin").is_dir() else []
        hint = f"; configs here: {', '.join(shipped)}" if shipped else ""
        raise ConfigError(f"config file {config} does not exist{hint}")
    check_binding_syntax(bindings)
    gin.clear_config()
    for folder in (config.parent, config.parent.parent):
        gin.add_config_file_search_path(str(folder))
    logging.disable(logging.ERROR)  # gin logs "Path not found" for every search-path miss
    try:
        gin.parse_config_files_and_bindings(
            [str(config)], list(bindings), skip_unknown=False, finalize_config=False
        )
    except (ValueError, SyntaxError, KeyError, TypeError, OSError) as error:
        gin.clear_config()
        raise ConfigError(_explain(str(error), config, registry)) from error
    finally:
        logging.disable(logging.NOTSET)


VALUE_FORMS = (
    "numbers (0.01, 1e-3, 100), 'strings' in quotes, True / False / None, tuples (16, 16), "
    "lists [1, 2], dicts {'a': 1}, references @kind.Name() (built) or @kind.Name (the "
    "factory), macros %NAME"
)
_UNPARSED_TOKEN = re.compile(r"Failed to parse token '([^']*)'")


def check_binding_syntax(bindings: Sequence[str]) -> None:
    """Raise ConfigError naming the first `--bind` whose text gin cannot parse, and the value
    forms gin accepts (gin's own message would name the config file's line 1)."""
    from gin import config_parser

    for binding in bindings:
        try:
            list(config_parser.ConfigParser(binding, gin.config.ParserDelegate(skip_unknown=True)))
        except (SyntaxError, ValueError, tokenize.TokenError) as error:
            raise ConfigError(
                f"--bind {_quoted(binding)}: {_parse_problem(binding, error)}; a binding is "
                f"`kind.Name.parameter = value` (or `MACRO = value`) and gin reads these "
                f"values: {VALUE_FORMS}"
            ) from error


def _parse_problem(binding: str, error: Exception) -> str:
    """What is wrong with a binding gin could not parse, in words (no parser internals)."""
    name, equals, value = binding.partition("=")
    if not equals:
        return "it has no '='"
    if not value.strip():
        return f"no value after '=' for {name.strip()}"
    if token := _UNPARSED_TOKEN.search(str(error)):
        return f"{token.group(1)!r} in {value.strip()!r} is not a value gin reads"
    reason = str(error).splitlines()[0]
    reason = re.sub(r"\s*\(line \d+\)$", "", reason)
    return f"the value {value.strip()!r} does not parse ({reason})"


def unused_bindings(bindings: Sequence[str]) -> list[str]:
    """The `--bind` strings, among `bindings`, that bind a parameter of a configurable this run
    never builds nor references (e.g. `samplers.MALA.step_size` in a Langevin config): call
    after the experiment is built. Macros are not checked."""
    from gin import config_parser

    built = {selector for _, selector in gin.config._OPERATIVE_CONFIG}
    referenced = {
        reference.configurable.selector
        for values in gin.config._CONFIG.values()
        for reference in _references(values)
    }
    unused = []
    for binding in bindings:
        delegate = gin.config.ParserDelegate(skip_unknown=True)
        for statement in config_parser.ConfigParser(binding, delegate):
            if not isinstance(statement, config_parser.BindingStatement):
                continue
            if not statement.arg_name:  # a macro
                continue
            configurable = gin.config._REGISTRY.get_match(statement.selector)
            if configurable is None:
                continue
            if configurable.selector not in built | referenced:
                unused.append(binding)
                break
    return unused


def _references(value: Any) -> Iterator[Any]:
    """Every gin ConfigurableReference inside a bound value (dicts, lists, tuples)."""
    if isinstance(value, gin.config.ConfigurableReference):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _references(item)
    elif isinstance(value, list | tuple | set):
        for item in value:
            yield from _references(item)


def _explain(message: str, config: Path, registry: Registry) -> str:
    """gin's message, plus the choices it did not list."""
    if match := _UNKNOWN_CONFIGURABLE.search(message):
        name = match.group(1)
        kind = registry.kind_of_plural(name.rpartition(".")[0])
        if kind is not None:
            known = ", ".join(f"{c.gin_name} ({c.plugin})" for c in registry.components(kind))
            message += f"\nregistered {kind}s: {known}"
        else:
            plurals = sorted(map(registry.plural, registry.kinds()))
            message += f"\ncomponents are named <kinds>.<Name>, kinds one of {plurals}"
        for plugin in registry.broken_plugins():
            message += f"\nplugin {plugin.name!r} failed to import: {plugin.error}"
    elif match := _UNKNOWN_PARAMETER.search(message):
        plural, _, name = match.group(1).rpartition(".")
        try:
            factory = registry.get(registry.kind_of_plural(plural) or plural, name).factory
            parameters = ", ".join(inspect.signature(factory).parameters)
            message += f"\nits parameters are: {parameters}"
        except (ValueError, KeyError):
            pass
    return f"in config {config}: {message}"


def build_configured(config: Path, name: str, bindings: Sequence[str] = ()) -> Any:
    """The object `config` (plus `bindings`) builds for configurable `name`, e.g.
    "samplers.Stanley": what `ebmkit run` would use. gin is cleared afterwards."""
    get_registry()
    try:
        parse_config(config, bindings)
        return gin.get_configurable(name)()
    finally:
        gin.clear_config()


def set_rounds(rounds: int) -> None:
    """Bind the trainer's `n_rounds` (the CLI's --rounds), so the operative config shows it."""
    if rounds < 0:
        raise ConfigError(f"--rounds must be >= 0, got {rounds}")
    try:
        reference = gin.query_parameter("experiment.trainer")
    except ValueError as error:
        raise ConfigError(
            "the config binds no `experiment.trainer`; add e.g. "
            "`experiment.trainer = @trainers.Contrastive()`"
        ) from error
    gin.bind_parameter(f"{reference.selector}.n_rounds", rounds)


_IN_CALL = re.compile(r"\n  In call to configurable '([\w.]+)' \((.*)\)(?: in scope '([^']*)')?")
_ATTRS_DUMP = re.compile(r"""^\((['"])(.+?)\1, Attribute\(name=""", re.DOTALL)
_ATTRS_INIT_LINE = re.compile(r"__attr_(?:converter|validator)_(\w+)\(|_setattr\('(\w+)'")
_MISSING_ARGUMENTS = re.compile(
    r"missing \d+ required (?:keyword-only |positional )?arguments?: (.+)"
)
_BINDING = re.compile(r"^\s*([\w./]+)\s*=")
_INCLUDE = re.compile(r"""^\s*include\s+(['"])(.+?)\1""")


def explain_build_error(
    error: Exception, config: Path, bindings: Sequence[str] = ()
) -> ConfigError:
    """The ConfigError for `error`, raised while gin built a configurable (`Experiment()`).

    A converter or validator that refused a value is traced to its parameter: the message
    names it (`samplers.Langevin.n_steps`), the value seen, where it was set (the `--bind`,
    else the config file and line) and the type it takes. Otherwise it names the component
    that failed and every place its parameters are set.

    Arguments:
        error: the TypeError / ValueError gin re-raised ("In call to configurable ...").
        config: the config file of the run.
        bindings: the run's `--bind` strings, in order.

    Returns:
        A ConfigError to raise `from error`.
    """
    message = str(error)
    call = _IN_CALL.search(message)
    configurable = _configurable(call) if call else None
    if configurable is None:
        return ConfigError(f"in config {config}: {_plain(message)}")
    reason = _plain(message[: call.start()])
    scope = call.group(3) or ""
    name = _display_name(configurable)
    selector = f"{scope}/{name}" if scope else name
    factory = inspect.unwrap(configurable.wrapped)
    parameter = _failing_parameter(error, factory)
    if parameter is None:
        return ConfigError(
            _explain_component(reason, selector, scope, configurable, config, bindings)
        )
    qualified = f"{selector}.{parameter}"
    for quoted in (f"'{parameter}' ", f"{parameter} "):
        if reason.startswith(quoted):
            reason = f"{qualified} {reason[len(quoted) :]}"
    if not reason.startswith(qualified):  # a converter or a type clash: say what it takes
        takes = _takes(factory, parameter)
        takes = f"; {qualified} takes {takes}" if takes else ""
        reason = f"{qualified} = {_bound_value(qualified)} is refused ({reason}){takes}"
    where, fix = _source(configurable, scope, parameter, config, bindings)
    return ConfigError(f"{where}: {reason}; {fix}")


def _plain(message: str) -> str:
    """A message without attrs' `Attribute(...)` dump (attrs' own `in_` validator)."""
    if match := _ATTRS_DUMP.match(message):
        return match.group(2)
    return message.strip()


def _configurable(call: re.Match[str]) -> Any:
    """gin's registered configurable named in "In call to configurable 'X' (<fn>)"."""
    registry = gin.config._REGISTRY
    found = [registry.get_match(s) for s in registry.matching_selectors(call.group(1))]
    if len(found) > 1:  # the same short name in two modules: the function's repr decides
        found = [c for c in found if str(c.wrapped) == call.group(2)]
    return found[0] if len(found) == 1 else None


def _display_name(configurable: Any) -> str:
    """`samplers.Langevin` for a registered component, else gin's shortest name."""
    if configurable.module and get_registry().kind_of_plural(configurable.module):
        return f"{configurable.module}.{configurable.name}"
    return gin.config._REGISTRY.minimal_selector(configurable.selector)


def _failing_parameter(error: BaseException, factory: Any) -> str | None:
    """The parameter whose converter or validator raised `error`, from its traceback."""
    try:
        accepted = set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return None
    frames = list(traceback.walk_tb(error.__traceback__))
    for frame, line_number in reversed(frames):
        names = [v.name for v in frame.f_locals.values() if isinstance(v, attrs.Attribute)]
        if not names and frame.f_code.co_filename.startswith("<attrs generated"):
            line = linecache.getline(frame.f_code.co_filename, line_number)
            names = [next(filter(None, m.groups())) for m in _ATTRS_INIT_LINE.finditer(line)]
        for name in names[:1]:
            return name if name in accepted else None
    return None


def _bound_value(qualified: str) -> str:
    try:
        return repr(gin.query_parameter(qualified))
    except ValueError:
        return "its default"


def _takes(factory: Any, parameter: str) -> str:
    """A parameter's annotation and default as far as known, e.g. "int (default 100)"."""
    default: Any = attrs.NOTHING
    if attrs.has(factory) and (field := attrs.fields_dict(factory).get(parameter)) is not None:
        annotation, default = field.type, field.default
    else:
        try:
            signature_parameter = inspect.signature(factory).parameters[parameter]
        except (TypeError, ValueError, KeyError):
            return ""
        annotation, default = signature_parameter.annotation, signature_parameter.default
        annotation = None if annotation is inspect.Parameter.empty else annotation
        default = attrs.NOTHING if default is inspect.Parameter.empty else default
    if annotation is None:
        return ""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if not text:
        text = str(annotation)
    if default is not attrs.NOTHING and not isinstance(default, attrs.Factory):
        text += f" (default {default!r})"
    return text


def _matches(binding: str, configurable: Any, scope: str, parameter: str | None) -> bool:
    """Whether a binding line sets `parameter` (any, if None) of `configurable` in `scope`."""
    if not (match := _BINDING.match(binding)):
        return False
    selector, _, name = match.group(1).rpartition(".")
    bound_scope, _, selector = selector.rpartition("/")
    if bound_scope != scope or (parameter is not None and name != parameter):
        return False
    return configurable.selector in gin.config._REGISTRY.matching_selectors(selector)


def _quoted(binding: str) -> str:
    """A binding as a shell user would type it after --bind."""
    if "'" not in binding:
        return f"'{binding}'"
    return f'"{binding}"' if '"' not in binding and "$" not in binding else shlex.quote(binding)


def _config_lines(config: Path, seen: set[Path] | None = None) -> Iterator[tuple[Path, int, str]]:
    """(file, line number, line) of `config` and the files it includes, in parse order."""
    seen = set() if seen is None else seen
    if config.resolve() in seen or not config.is_file():
        return
    seen.add(config.resolve())
    for number, line in enumerate(config.read_text().splitlines(), 1):
        if include := _INCLUDE.match(line):
            name = Path(include.group(2))
            for folder in (config.parent, config.parent.parent, Path.cwd()):
                if (folder / name).is_file():
                    yield from _config_lines(folder / name, seen)
                    break
        else:
            yield config, number, line


def _source(
    configurable: Any, scope: str, parameter: str, config: Path, bindings: Sequence[str]
) -> tuple[str, str]:
    """Where a parameter was set (the last --bind, else the last config line) and the fix."""
    for binding in reversed(bindings):
        if any(_matches(line, configurable, scope, parameter) for line in binding.splitlines()):
            return f"--bind {_quoted(binding)}", "fix that --bind"
    found = [
        (path, number, line)
        for path, number, line in _config_lines(config)
        if _matches(line, configurable, scope, parameter)
    ]
    if found:
        path, number, line = found[-1]
        return f"in config {path}, line {number} ({line.strip()})", "fix that line"
    return f"in config {config}", f"bind a valid value in {config} or with --bind"


def _explain_component(
    reason: str,
    selector: str,
    scope: str,
    configurable: Any,
    config: Path,
    bindings: Sequence[str],
) -> str:
    """A component that failed to build for a reason no single parameter's check gave."""
    message = f"in config {config}: {selector} could not be built: {reason}"
    if missing := _MISSING_ARGUMENTS.search(reason):
        names = re.findall(r"'(\w+)'", missing.group(1))
        example = f"{selector}.{names[0]} = ..." if names else ""
        return f"{message}; bind {', '.join(f'{selector}.{n}' for n in names)} (e.g. {example})"
    places = [f"--bind {_quoted(b)}" for b in bindings if _matches(b, configurable, scope, None)]
    places += [
        f"{path} line {number}"
        for path, number, line in _config_lines(config)
        if _matches(line, configurable, scope, None)
    ]
    if places:
        message += f"\n{selector} is set by: {', '.join(places)}; fix the value there"
    return message
