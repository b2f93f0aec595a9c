"""The parser class every `cifarflow` verb uses: epilogs kept as written, defaults shown."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps hand-made line breaks in descriptions and epilogs, and adds each flag's default.

    A default is shown when it says something: not for flags without a value
    (None, False, an empty string or list), whose help explains what happens.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        empty = default is None or default is False or default in ("", [])
        shown = not empty and default is not argparse.SUPPRESS
        if shown and action.option_strings and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser that always formats its help with `HelpFormatter`.

    `cifarflow`'s main parser hands this class to `add_subparsers`, so every
    verb's parser (and their own sub-parsers) gets it without asking.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["formatter_class"] = HelpFormatter
        super().__init__(*args, **kwargs)
