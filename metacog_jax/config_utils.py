"""Config plumbing: sweep strings, config files, command-line overrides, config.json.

Every experiment config is a Python file defining ``get_config(arg)`` that
returns an ``ml_collections.ConfigDict``; ``arg`` is a short sweep string such
as ``"domains=gsm8k+mmlu_pro,lora_rank=16,quick"`` read with :func:`parse_arg`.

How the command line maps onto this module (absl style)::

    metacog train --config=configs/multitask.py:domains=gsm8k,lora_rank=16 \\
        --config.train.lr=1e-5 --config.model.name smollm2_135m --workdir=/tmp/run

:func:`split_config_argv` pulls ``--config=...`` (the *spec*,
``configs/multitask.py:domains=gsm8k,lora_rank=16``) and every
``--config.<field>=<value>`` / ``--config.<field> <value>`` (the *overrides*,
``["train.lr=1e-5", "model.name=smollm2_135m"]``) out of argv and returns the
remaining arguments (``["train", "--workdir=/tmp/run"]``) untouched.
:func:`load_config` then imports the file, calls ``get_config(arg)``, applies
the overrides (each typed by the field it replaces; a field that does not
exist is an error with close matches suggested) and locks the config so later
typos fail too.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import inspect
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from metacog_jax import artifacts

_TRUE_WORDS = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE_WORDS = frozenset({"0", "false", "f", "no", "n", "off"})


# ---------------------------------------------------------------------------
# Typed parsing of one string value.
# ---------------------------------------------------------------------------


def _parse_bool(text: str, where: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError(f"{where}: expected a boolean (true/false/1/0/yes/no), got {text!r}")


def _parse_int(text: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    # Accept "1e3" or "2.0" for integer fields when the value is integral.
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{where}: expected an integer, got {text!r}") from None
    if not number.is_integer():
        raise ValueError(f"{where}: expected an integer, got non-integral {text!r}")
    return int(number)


def _parse_float(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: expected a float, got {text!r}") from None


def _parse_literal(text: str) -> Any:
    """A Python literal when ``text`` is one, else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _parse_scalar(text: str, kind: type, where: str) -> Any:
    if kind is bool:
        return _parse_bool(text, where)
    if kind is int:
        return _parse_int(text, where)
    if kind is float:
        return _parse_float(text, where)
    if kind is str:
        return text
    if kind is type(None):
        return _parse_literal(text)
    value = _parse_literal(text)
    if not isinstance(value, kind):
        raise ValueError(f"{where}: expected a {kind.__name__}, got {text!r}")
    return value


def _split_sequence(text: str) -> list[str]:
    # Commas win when present so that "+" inside an element (e.g. "1e+5") survives.
    if "," in text:
        return [part.strip() for part in text.split(",")]
    return [part.strip() for part in text.split("+")]


def _parse_sequence(text: str, default: Sequence[Any], where: str) -> tuple | list:
    """Parse ``a,b,c`` / ``a+b+c`` / a Python literal into the default's container type."""
    container = type(default)
    stripped = text.strip()
    if stripped and stripped[0] in "([":
        try:
            value = ast.literal_eval(stripped)
        except (ValueError, SyntaxError):
            raise ValueError(f"{where}: {text!r} is not a Python list or tuple literal (quote strings: "
                             "['a', 'b']), nor a plain list (a,b)") from None
        if not isinstance(value, (tuple, list)):
            raise ValueError(f"{where}: expected a sequence literal, got {text!r}")
        return container(value)
    if stripped == "":
        return container()
    element_types = {type(item) for item in default}
    parts = _split_sequence(stripped)
    if len(element_types) == 1:
        (element_type,) = element_types
        items = [_parse_scalar(part, element_type, f"{where}[{i}]") for i, part in enumerate(parts)]
    else:
        items = [_parse_literal(part) for part in parts]
    return container(items)


def parse_value(text: str, default: Any, where: str = "value") -> Any:
    """Parse ``text`` into the type of ``default``.

    Args:
      text: the string from the command line or a sweep string.
      default: the existing value whose type decides the parse (bool, int,
        float, str, tuple/list of those, or None for "any Python literal").
      where: a name used in error messages (e.g. ``"--config.train.lr"``).

    Returns:
      The typed value. The literal ``None`` is accepted for every non-str type.

    Raises:
      ValueError: naming ``where`` when ``text`` does not parse as that type.
    """
    if text == "None" and not isinstance(default, str):
        return None
    if isinstance(default, (tuple, list)):
        return _parse_sequence(text, default, where)
    return _parse_scalar(text, type(default), where)


# ---------------------------------------------------------------------------
# Sweep strings: "a=1,b=x+y,flag".
# ---------------------------------------------------------------------------


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
    """Parse a big_vision-style sweep string into a ConfigDict of typed values.

    Example::

        parse_arg("domains=gsm8k+mmlu_pro,lora_rank=16,quick",
                  domains="", lora_rank=8, quick=False)
        # -> domains="gsm8k+mmlu_pro", lora_rank=16, quick=True

    Rules: items are separated by ``,``; ``key=value`` is parsed with the type
    of ``spec[key]``; a bare ``key`` sets a bool to True; when the default is a
    tuple (or list), ``value`` is split on ``+`` into one (``a+b`` -> ``("a", "b")``).
    Keys not given keep their defaults.

    Args:
      arg: the sweep string (None or "" means all defaults).
      **spec: every accepted key with its default value (the default's type is
        the key's type).

    Returns:
      An unlocked ConfigDict holding every key of ``spec``.

    Raises:
      ValueError: for an unknown key (the known keys are listed), a repeated
        key, a bare non-bool key, or a value that does not parse.
    """
    values = dict(spec)
    seen: set[str] = set()
    for item in (arg or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, has_value, text = item.partition("=")
        key = key.strip()
        if key not in spec:
            known = ", ".join(sorted(spec)) or "(none)"
            raise ValueError(f"config arg {arg!r}: unknown key {key!r}; known keys: {known}")
        if key in seen:
            raise ValueError(f"config arg {arg!r}: key {key!r} given twice")
        seen.add(key)
        default = spec[key]
        where = f"config arg {key!r}"
        if not has_value:
            if not isinstance(default, bool):
                raise ValueError(
                    f"{where}: a bare name only sets a bool; {key!r} has default {default!r}, "
                    f"write {key}=<value>")
            values[key] = True
        elif isinstance(default, (tuple, list)):
            parts = [part.strip() for part in text.split("+")] if text.strip() else []
            element_types = {type(v) for v in default}
            if len(element_types) == 1:
                (element_type,) = element_types
                values[key] = type(default)(
                    _parse_scalar(p, element_type, f"{where}[{i}]") for i, p in enumerate(parts))
            else:
                values[key] = type(default)(parts)
        else:
            values[key] = parse_value(text.strip(), default, where)
    return ml_collections.ConfigDict(values)


# ---------------------------------------------------------------------------
# Config files and overrides.
# ---------------------------------------------------------------------------


def split_spec(spec: str) -> tuple[str, str | None]:
    """Split ``"path/file.py:arg"`` into ``("path/file.py", "arg")``; no ``:arg`` gives None."""
    index = spec.find(".py:")
    if index >= 0:
        return spec[: index + 3], spec[index + 4 :]
    return spec, None


def resolve_config_path(path_text: str) -> Path:
    """The config file that ``path_text`` names.

    A path that exists (relative to the working directory, or absolute) is used as is. Otherwise a
    relative path starting with ``configs/`` names a file of the installed ``configs`` package, so
    ``--config=configs/demo.py`` works from any working directory; when that file is not there
    either, the path is returned unchanged (and loading it fails naming it).
    """
    path = Path(path_text)
    if path.exists() or path.is_absolute() or len(path.parts) < 2 or path.parts[0] != "configs":
        return path
    try:
        package = importlib.util.find_spec("configs")
    except (ImportError, ValueError):
        package = None
    roots = list(package.submodule_search_locations or []) if package is not None else []
    for root in roots:
        candidate = Path(root).joinpath(*path.parts[1:])
        if candidate.is_file():
            return candidate
    return path


def _import_config_file(path_text: str) -> Any:
    """Run the config file ``path_text`` (see :func:`resolve_config_path`) as a fresh module.

    The file imports the shared pieces as ``from configs import common`` (``configs`` is installed
    with the project); each load executes the file anew, so an edited file is picked up.
    """
    path = resolve_config_path(path_text)
    if not path.is_file():
        raise FileNotFoundError(
            f"config file {path_text!r} does not exist (relative to {os.getcwd()}; a configs/... path "
            "also names the installed configs package's files)")
    module_name = "_metacog_config_" + re.sub(r"\W", "_", str(path.resolve()))
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"config file {path_text!r} cannot be imported as Python")
    module = importlib.util.module_from_spec(module_spec)
    # Sibling config files (e.g. model presets) are importable by bare name; the
    # directory goes last so it cannot shadow installed packages.
    config_dir = str(path.resolve().parent)
    added = config_dir not in sys.path
    if added:
        sys.path.append(config_dir)
    try:
        module_spec.loader.exec_module(module)
    finally:
        if added:
            sys.path.remove(config_dir)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path_text!r} defines no get_config()")
    return module


def _flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key in config.keys():
        value = config[key]
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(_flat_keys(value, full + "."))
    return keys


def _missing_key_error(config: ml_collections.ConfigDict, key: str, where: str) -> ValueError:
    candidates = _flat_keys(config)
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"{where}: config has no field {key!r}{hint}")


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Apply one ``"a.b.c=value"`` override to ``config`` in place.

    The value is typed by the existing field (see :func:`parse_value`): bools
    accept true/false/1/0, tuples accept ``x,y`` or ``x+y`` or a literal,
    None-valued fields take any Python literal (else the raw string). A
    leading ``--config.`` is accepted and ignored.

    Raises:
      ValueError: when there is no ``=``, the field does not exist (close
        matches are suggested), the field is a sub-config, or the value does
        not parse as the field's type.
    """
    text = override[len("--config."):] if override.startswith("--config.") else override
    key, has_value, raw = text.partition("=")
    where = f"override {override!r}"
    if not has_value or not key:
        raise ValueError(f"{where}: expected <field>=<value>, e.g. train.lr=1e-5")
    parts = key.split(".")
    node = config
    for depth, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise _missing_key_error(config, ".".join(parts[: depth + 1]), where)
        node = node[part]
    leaf = parts[-1]
    if leaf not in node:
        raise _missing_key_error(config, key, where)
    current = node[leaf]
    if isinstance(current, ml_collections.ConfigDict):
        raise ValueError(
            f"{where}: field {key!r} is a sub-config; override its fields, e.g. {key}.<name>=<value>")
    declared = node.get_type(leaf)
    if current is None and declared is not type(None):
        # A typed placeholder (config_dict.placeholder(int)): parse by its declared type.
        value = None if raw == "None" else _parse_scalar(raw, declared, where)
    else:
        value = parse_value(raw, current, where)
    try:
        setattr(node, leaf, value)
    except TypeError as error:
        raise ValueError(f"{where}: {error}") from None


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Build a locked config from ``path/file.py[:arg]`` plus ``field=value`` overrides.

    Args:
      spec: a config file path, optionally followed by ``:arg`` (a sweep
        string passed to ``get_config(arg)``). A ``configs/<file>.py`` path
        that does not exist relative to the working directory names the
        installed ``configs`` package's file. Without ``:arg``,
        ``get_config()`` is called when it takes no required argument, else
        ``get_config("")`` (all defaults).
      overrides: strings like ``"train.lr=1e-5"`` (see :func:`apply_override`),
        applied in order.

    Returns:
      The locked ConfigDict: assigning a field that does not exist raises.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file has no ``get_config``, returns something that is not
        a ConfigDict, or an override is bad.
    """
    path_text, arg = split_spec(spec)
    module = _import_config_file(path_text)
    get_config = module.get_config
    if arg is not None:
        config = get_config(arg)
    else:
        required = [
            p for p in inspect.signature(get_config).parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        config = get_config("") if required else get_config()
    if isinstance(config, Mapping) and not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(config)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(
            f"config file {path_text!r}: get_config returned {type(config).__name__}, "
            "expected an ml_collections.ConfigDict")
    for override in overrides:
        apply_override(config, override)
    config.lock()
    return config


def split_config_argv(argv: Sequence[str]) -> tuple[str | None, list[str], list[str]]:
    """Separate config flags from the rest of a command line.

    Recognised forms: ``--config=SPEC``, ``--config SPEC``,
    ``--config.a.b=VALUE``, ``--config.a.b VALUE`` and a bare
    ``--config.flag`` (followed by another ``--`` flag or nothing), which means
    ``flag=true``. Everything after a literal ``--`` is passed through as is.

    Args:
      argv: arguments without the program name, e.g. ``sys.argv[1:]``.

    Returns:
      ``(spec, overrides, rest)``: the config spec (None if absent), overrides
      as ``"a.b=VALUE"`` strings in command-line order, and all other arguments
      in their original order.

    Raises:
      ValueError: ``--config`` given twice or without a value.
    """
    spec: str | None = None
    overrides: list[str] = []
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg == "--config" or arg.startswith("--config="):
            if spec is not None:
                raise ValueError(f"--config given twice: {spec!r} and {arg!r}")
            if arg == "--config":
                if i + 1 >= len(args):
                    raise ValueError("--config needs a value: --config=path/to/file.py[:arg]")
                spec = args[i + 1]
                i += 2
                continue
            spec = arg[len("--config="):]
            if not spec:
                raise ValueError("--config needs a value: --config=path/to/file.py[:arg]")
            i += 1
            continue
        if arg.startswith("--config."):
            body = arg[len("--config."):]
            if "=" in body:
                overrides.append(body)
                i += 1
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                overrides.append(f"{body}={args[i + 1]}")
                i += 2
            else:
                overrides.append(f"{body}=true")
                i += 1
            continue
        rest.append(arg)
        i += 1
    return spec, overrides, rest


# ---------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------


def config_to_json(config: ml_collections.ConfigDict) -> str:
    """The config as indented JSON with sorted keys (tuples become lists; see artifacts.json_ready)."""
    return artifacts.json_text(config, sort_keys=True)


def save_config(config: ml_collections.ConfigDict, path: str | os.PathLike) -> Path:
    """Write ``config`` as JSON atomically (artifacts.atomic_output); returns the file written.

    Args:
      config: the config to save.
      path: a ``.json`` file path, or a directory (the workdir; created if
        needed) in which ``config.json`` is written.

    On multi-host runs call this from process 0 only when the workdir is shared.
    """
    target = Path(path)
    if target.suffix != ".json":
        target = target / "config.json"
    return artifacts.write_text(target, config_to_json(config))


def _tuples(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def load_config_json(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """Read a config saved by :func:`save_config` (a file or a workdir) as a locked ConfigDict.

    JSON lists come back as tuples, matching how configs declare sequences.
    """
    source = Path(path)
    if source.is_dir():
        source = source / "config.json"
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{source}: line {error.lineno}: invalid JSON ({error.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object at top level")
    config = ml_collections.ConfigDict(_tuples(data))
    config.lock()
    return config
