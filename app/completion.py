"""Shell completion for bash, zsh and fish (`dsm completion SHELL`), read off the parser.

Commands, options and fixed choices come from the argparse parser, so the scripts never drift
from the command line. Dataset names are asked for at completion time with the hidden
`dsm list --names` (the catalogue of DSM_HOME / DSM_CATALOG; no Textual, no network).
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass

SHELLS = ("bash", "zsh", "fish")
NAMES_COMMAND = "command dsm list --names 2>/dev/null"


@dataclass(frozen=True)
class Arg:
    """An option (flags) or a positional (no flags), and what its value completes to."""

    flags: tuple[str, ...]
    help: str
    takes: str  # "" a flag without value, "names", "dirs", "files", "words", "text"
    words: tuple[str, ...] = ()


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    args: tuple[Arg, ...]  # its own options and positionals
    # A command with actions (`dsm cache status|push`): each action and its positional, if
    # any (`push NAME...`), offered once the action is on the line.
    actions: tuple[tuple[str, Arg | None], ...] = ()


def _arg(action: argparse.Action) -> Arg:
    label = str(action.metavar or action.dest).upper()
    if action.nargs == 0:
        takes = ""
    elif action.choices:
        takes = "words"
    else:
        takes = {"NAME": "names", "DIR": "dirs", "FILE": "files"}.get(label, "text")
    words = tuple(str(c) for c in action.choices or ())
    return Arg(tuple(action.option_strings), action.help or "", takes, words)


def _visible(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.help != argparse.SUPPRESS and not isinstance(a, argparse._SubParsersAction)
    ]


def describe(parser: argparse.ArgumentParser) -> tuple[tuple[Arg, ...], tuple[Command, ...]]:
    """The top-level options (accepted everywhere) and the commands with their own args."""
    top = tuple(_arg(a) for a in _visible(parser))
    known = {f for a in top for f in a.flags}
    commands: list[Command] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help or "" for c in action._choices_actions}
            for name, sub in action.choices.items():
                own = [*_nested(sub), *(_arg(a) for a in _visible(sub))]
                args = tuple(a for a in dict.fromkeys(own) if not set(a.flags) & known)
                commands.append(Command(name, helps.get(name, ""), args, _actions(sub)))
    return top, tuple(commands)


def _actions(parser: argparse.ArgumentParser) -> tuple[tuple[str, Arg | None], ...]:
    """A command's actions with their first positional (None: it takes none)."""
    return tuple(
        (name, next((_arg(a) for a in _visible(sub) if not a.option_strings), None))
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name, sub in action.choices.items()
    )


def _nested(parser: argparse.ArgumentParser) -> list[Arg]:
    """A command with actions of its own (`dsm cache status|push`): the action words are its
    positional, and the actions' options are offered with the command's own."""
    out: list[Arg] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.append(Arg((), action.help or "", "words", tuple(action.choices)))
            for sub in action.choices.values():
                out += [_arg(a) for a in _visible(sub) if a.option_strings]
    return out


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    top, commands = describe(parser)
    return {"bash": _bash, "zsh": _zsh, "fish": _fish}[shell](top, commands)


def _words(words: tuple[str, ...] | list[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)


def _flags(args: tuple[Arg, ...]) -> list[str]:
    return [f for a in args for f in a.flags]


def _positional(cmd: Command) -> Arg | None:
    return next((a for a in cmd.args if not a.flags), None)


# -- bash and zsh share their shape: a case on the previous word, then options or the
#    command's positional. Only how a value is offered differs.
_BASH_VALUE = {
    "names": 'COMPREPLY=($(compgen -W "$(_dsm_names)" -- "$cur"))',
    "dirs": 'compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -d -- "$cur"))',
    "files": 'compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur"))',
    "words": 'COMPREPLY=($(compgen -W "{words}" -- "$cur"))',
    "text": "COMPREPLY=()",
}
_ZSH_VALUE = {
    "names": 'compadd -- ${{(f)"$(_dsm_names)"}}',
    "dirs": "_directories",
    "files": "_files",
    "words": "compadd -- {words}",
    "text": ":",
}

_BASH = """\
# dsm completion for bash. Load it with: source <(dsm completion bash)
# or save it as ~/.local/share/bash-completion/completions/dsm
_dsm_names() {{ {names}; }}
_dsm() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}" cmd="" act="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            {command_names}) [[ -z "$cmd" ]] && cmd="${{COMP_WORDS[i]}}" ;;
            {action_names}) [[ -n "$cmd" && -z "$act" ]] && act="${{COMP_WORDS[i]}}" ;;
        esac
    done
    case "$prev" in
{values}
    esac
    if [[ "$cur" == -* ]]; then
        local opts="{options}"
        case "$cmd" in
{command_options}
        esac
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
        return
    fi
    case "$cmd" in
        "") COMPREPLY=($(compgen -W "{commands}" -- "$cur")) ;;
{positionals}
    esac
}}
complete -F _dsm dsm
"""

_ZSH = """\
#compdef dsm
# dsm completion for zsh. Load it with: source <(dsm completion zsh)   (after compinit)
# or save it as _dsm in a folder of your $fpath
_dsm_names() {{ {names}; }}
_dsm() {{
    local cur="${{words[CURRENT]}}" prev="${{words[CURRENT-1]}}" cmd="" act="" w
    for w in "${{(@)words[2,CURRENT-1]}}"; do
        case "$w" in
            ({command_names}) [[ -z "$cmd" ]] && cmd="$w" ;;
            ({action_names}) [[ -n "$cmd" && -z "$act" ]] && act="$w" ;;
        esac
    done
    case "$prev" in
{values}
    esac
    if [[ "$cur" == -* ]]; then
        local -a opts=({options})
        case "$cmd" in
{command_options}
        esac
        compadd -- "${{opts[@]}}"
        return
    fi
    case "$cmd" in
        ("") compadd -- {commands} ;;
{positionals}
    esac
}}
if [[ "${{funcstack[1]}}" == _dsm ]]; then _dsm "$@"; else compdef _dsm dsm; fi
"""


def _shell_cases(
    top: tuple[Arg, ...], commands: tuple[Command, ...], value: dict[str, str], zsh: bool
) -> dict[str, str]:
    """The pieces both templates take (zsh and bash read `a|b)` case patterns alike)."""

    def pattern(words: list[str]) -> str:
        return "|".join(words)

    def offer(arg: Arg | None) -> str:
        return value[arg.takes if arg else "text"].format(words=_words(arg.words if arg else ()))

    def positional(command: Command, arg: Arg) -> str:
        if not command.actions:
            return offer(arg)
        then = " ".join(f"{name}) {offer(a)} ;;" for name, a in command.actions)
        return f'case "$act" in {then} "") {offer(arg)} ;; esac'

    def more(words: list[str]) -> str:
        return f"opts+=({_words(words)})" if zsh else f'opts+=" {" ".join(words)}"'

    valued = [a for c in commands for a in c.args if a.flags and a.takes] + [
        a for a in top if a.takes
    ]
    pad = " " * 8
    values = [f"{pad}{pattern(list(a.flags))}) {offer(a)}; return ;;" for a in valued]
    command_options = [
        f"{pad}    {pattern([c.name])}) {more(_flags(c.args))} ;;"
        for c in commands
        if _flags(c.args)
    ]
    positionals = [
        f"{pad}{pattern([c.name])}) {positional(c, arg)} ;;"
        for c in commands
        if (arg := _positional(c)) is not None
    ]
    return {
        "names": NAMES_COMMAND,
        "command_names": "|".join(c.name for c in commands),
        "action_names": "|".join(dict.fromkeys(a for c in commands for a, _ in c.actions)),
        "values": "\n".join(dict.fromkeys(values)),
        "options": _words(_flags(top)) if zsh else " ".join(_flags(top)),
        "command_options": "\n".join(command_options),
        "commands": " ".join(c.name for c in commands),
        "positionals": "\n".join(positionals),
    }


def _bash(top: tuple[Arg, ...], commands: tuple[Command, ...]) -> str:
    return _BASH.format(**_shell_cases(top, commands, _BASH_VALUE, zsh=False))


def _zsh(top: tuple[Arg, ...], commands: tuple[Command, ...]) -> str:
    return _ZSH.format(**_shell_cases(top, commands, _ZSH_VALUE, zsh=True))


_FISH_VALUE = {
    "names": "-f -a '(__dsm_names)'",
    "dirs": "-f -a '(__fish_complete_directories)'",
    "files": "-F",
    "words": "-f -a {words}",
    "text": "-f",
    "": "",
}


def _fish_line(arg: Arg, condition: str) -> str:
    parts = ["complete -c dsm"]
    if condition:
        parts.append(f"-n {shlex.quote(condition)}")
    for flag in arg.flags:
        parts.append(f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}")
    if arg.flags and arg.takes:
        parts.append("-r")  # the option needs a value
    parts.append(_FISH_VALUE[arg.takes].format(words=shlex.quote(" ".join(arg.words))))
    if arg.help:
        parts.append(f"-d {shlex.quote(arg.help)}")
    return " ".join(p for p in parts if p)


def _fish(top: tuple[Arg, ...], commands: tuple[Command, ...]) -> str:
    names = " ".join(c.name for c in commands)
    lines = [
        "# dsm completion for fish. Load it with: dsm completion fish | source",
        "# or save it as ~/.config/fish/completions/dsm.fish",
        f"function __dsm_names; {NAMES_COMMAND}; end",
        "complete -c dsm -f",
        *(
            f"complete -c dsm -n {shlex.quote(f'not __fish_seen_subcommand_from {names}')} "
            f"-a {c.name} -d {shlex.quote(c.help)}"
            for c in commands
        ),
        *(_fish_line(a, "") for a in top),
        *(line for c in commands for line in _fish_command(c)),
    ]
    return "\n".join(lines) + "\n"


def _fish_command(command: Command) -> list[str]:
    """A command's options and positional; with actions, the action words until one is on
    the line, then that action's positional."""
    seen = f"__fish_seen_subcommand_from {command.name}"
    acted = f"__fish_seen_subcommand_from {' '.join(a for a, _ in command.actions)}"
    lines = [
        _fish_line(a, f"{seen}; and not {acted}" if command.actions and not a.flags else seen)
        for a in command.args
    ]
    return lines + [
        _fish_line(arg, f"{seen}; and __fish_seen_subcommand_from {name}")
        for name, arg in command.actions
        if arg is not None
    ]
