# Copyright 2020 The HuggingFace Team. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""transformers' ``HfArgumentParser`` (transformers 5.25, ``transformers/hf_argparser.py``), vendored: an
argparse parser whose flags come from dataclass fields.

Why a copy: importing the transformers package costs most of a second, and the scorer's command line
(``reward_model.py score``, which trains nothing) must start without it (a test checks that neither transformers
nor torch loads). The copy keeps the part the toolkit uses: building the flags from the dataclasses (``--name``
and ``--name-with-hyphens``, typed, ``Optional`` and ``list`` fields, ``Literal``/``Enum`` choices, booleans with
``--no_name`` for a true default, defaults shown in ``--help``). Changed from the original: the parsing helpers
that the toolkit does not call (``parse_args_into_dataclasses``, ``parse_dict``, the JSON and YAML readers,
``HfArg``) are left out, and the field parser is split into two functions; behaviour is the original's.
"""

from __future__ import annotations

import dataclasses
import types
from argparse import ArgumentDefaultsHelpFormatter, ArgumentParser, ArgumentTypeError
from collections.abc import Callable, Iterable
from copy import copy
from enum import Enum
from inspect import isclass
from typing import Any, Literal, Union, get_type_hints


def string_to_bool(v: str | bool) -> bool:
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise ArgumentTypeError(
        f"Truthy value expected: got {v} but expected one of yes/no, true/false, t/f, y/n, 1/0 (case insensitive)."
    )


def make_choice_type_function(choices: list) -> Callable[[str], Any]:
    """A flag's type for choices of several types: each choice's text back to the choice."""
    str_to_choice = {str(choice): choice for choice in choices}
    return lambda arg: str_to_choice.get(arg, arg)


def _narrow_union(field: dataclasses.Field) -> Any:
    """``Optional[X]`` (or ``X | str``) becomes ``X``, one type per flag; returns the field's origin type."""
    origin_type = getattr(field.type, "__origin__", field.type)
    if origin_type is Union or isinstance(origin_type, types.UnionType):
        if str not in field.type.__args__ and (
            len(field.type.__args__) != 2 or type(None) not in field.type.__args__
        ):
            raise ValueError(
                "Only `Union[X, NoneType]` (i.e., `Optional[X]`) is allowed for `Union` because"
                " the argument parser only supports one type per argument."
                f" Problem encountered in field '{field.name}'."
            )
        if type(None) not in field.type.__args__:
            # filter `str` in Union
            field.type = field.type.__args__[0] if field.type.__args__[1] is str else field.type.__args__[1]
            origin_type = getattr(field.type, "__origin__", field.type)
        elif bool not in field.type.__args__:
            # filter `NoneType` in Union (except for `Union[bool, NoneType]`)
            field.type = field.type.__args__[0] if isinstance(None, field.type.__args__[1]) else field.type.__args__[1]
            origin_type = getattr(field.type, "__origin__", field.type)
    return origin_type


class HfArgumentParser(ArgumentParser):
    """An ``argparse.ArgumentParser`` with one flag per field of the given dataclasses (typed by their hints);
    more arguments can be added after it is made, as to any parser."""

    dataclass_types: Iterable[Any]

    def __init__(self, dataclass_types: Any | Iterable[Any] | None = None, **kwargs: Any):
        if dataclass_types is None:
            dataclass_types = []
        elif not isinstance(dataclass_types, Iterable):
            dataclass_types = [dataclass_types]
        if "formatter_class" not in kwargs:  # the defaults appear in --help
            kwargs["formatter_class"] = ArgumentDefaultsHelpFormatter
        super().__init__(**kwargs)
        if dataclasses.is_dataclass(dataclass_types):
            dataclass_types = [dataclass_types]
        self.dataclass_types = list(dataclass_types)
        for dtype in self.dataclass_types:
            self._add_dataclass_arguments(dtype)

    @staticmethod
    def _parse_dataclass_field(parser: ArgumentParser, field: dataclasses.Field) -> None:
        # argparse turns hyphens into underscores in the destination: both spellings of a long option work
        long_options = [f"--{field.name}"]
        if "_" in field.name:
            long_options.append(f"--{field.name.replace('_', '-')}")
        kwargs = dict(field.metadata)  # dataclasses leave metadata to third parties: here, argparse's keywords
        if isinstance(field.type, str):
            raise RuntimeError(
                "Unresolved type detected, which should have been done with the help of "
                "`typing.get_type_hints` method by default"
            )
        aliases = kwargs.pop("aliases", [])
        if isinstance(aliases, str):
            aliases = [aliases]
        origin_type = _narrow_union(field)
        # for a boolean field, the kwargs of its `no_*` complement (added after the field itself)
        bool_kwargs = {}
        if origin_type is Literal or (isinstance(field.type, type) and issubclass(field.type, Enum)):
            kwargs["choices"] = field.type.__args__ if origin_type is Literal else [x.value for x in field.type]
            kwargs["type"] = make_choice_type_function(kwargs["choices"])
            if field.default is not dataclasses.MISSING:
                kwargs["default"] = field.default
            else:
                kwargs["required"] = True
        elif field.type is bool or field.type == bool | None:
            bool_kwargs = copy(kwargs)
            kwargs["type"] = string_to_bool  # type=bool in argparse does not read "false" as False
            if field.type is bool or (field.default is not None and field.default is not dataclasses.MISSING):
                kwargs["default"] = False if field.default is dataclasses.MISSING else field.default
                kwargs["nargs"] = "?"  # --name alone means True
                kwargs["const"] = True
        elif isclass(origin_type) and issubclass(origin_type, list):
            kwargs["type"] = field.type.__args__[0]
            kwargs["nargs"] = "+"
            if field.default_factory is not dataclasses.MISSING:
                kwargs["default"] = field.default_factory()
            elif field.default is dataclasses.MISSING:
                kwargs["required"] = True
        else:
            kwargs["type"] = field.type
            if field.default is not dataclasses.MISSING:
                kwargs["default"] = field.default
            elif field.default_factory is not dataclasses.MISSING:
                kwargs["default"] = field.default_factory()
            else:
                kwargs["required"] = True
        parser.add_argument(*long_options, *aliases, **kwargs)
        # the `no_*` complement comes after the field's own flag: the order matters for flags of one destination
        if field.default is True and (field.type is bool or field.type == bool | None):
            bool_kwargs["default"] = False
            parser.add_argument(f"--no_{field.name}", f"--no-{field.name.replace('_', '-')}", action="store_false",
                                dest=field.name, **bool_kwargs)

    def _add_dataclass_arguments(self, dtype: Any) -> None:
        parser = self.add_argument_group(dtype._argument_group_name) if hasattr(dtype, "_argument_group_name") else self
        try:
            type_hints: dict[str, type] = get_type_hints(dtype)
        except NameError:
            raise RuntimeError(
                f"Type resolution failed for {dtype}. Try declaring the class in global scope or "
                "removing line of `from __future__ import annotations` which opts in Postponed "
                "Evaluation of Annotations (PEP 563)"
            ) from None
        for field in dataclasses.fields(dtype):
            if not field.init:
                continue
            field.type = type_hints[field.name]
            self._parse_dataclass_field(parser, field)
