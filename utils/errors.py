"""The errors a user can fix: each message names the file (and line or record) or the option at fault.

Scripts catch NanoDPRError and exit with one line instead of a traceback. HelpFormatter: their --help.
"""

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help with the description's own line breaks and each option's default (unless its help states it)."""

    def _get_help_string(self, action):
        if action.required or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class NanoDPRError(ValueError):
    """Base class: bad input or settings, never a bug."""


class DataError(NanoDPRError):
    """A bad input file; the message names the file and the line or record."""


class ConfigError(NanoDPRError):
    """An unknown option or a value of the wrong type; the message names where it came from."""


class EncoderError(NanoDPRError):
    """The model path is not an encoder of the requested role; the message says why."""
