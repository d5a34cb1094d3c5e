"""`softprobe completion bash|zsh|fish`: a shell completion script written from the parser itself
(`parsers`), so every command, option and choice argparse knows completes, and a new command needs
no edit here. Each script holds the tree as tables (the commands under each command path, the
options of each, the values an option allows) and one small function that walks the words typed
so far to the command path they reach; an option's value, or a command's own arguments, complete
as file names.

    softprobe completion bash > /usr/local/etc/bash_completion.d/softprobe
    softprobe completion zsh > "${fpath[1]}/_softprobe"
    softprobe completion fish > ~/.config/fish/completions/softprobe.fish
"""

from __future__ import annotations

import argparse
import shlex
from typing import TextIO

from softprobe_gateway.cli import parsers

SEP = "@"  # between a command path and an option in a table key: in neither


def register(commands: argparse._SubParsersAction, top: argparse.ArgumentParser) -> None:
    completion = commands.add_parser("completion", help="print a shell completion script",
                                     description=__doc__.split("\n\n")[0])
    completion.add_argument("shell", choices=("bash", "zsh", "fish"))
    completion.set_defaults(command=cmd_completion, top=top)


def cmd_completion(args: argparse.Namespace, settings: object, out: TextIO) -> int:
    print({"bash": bash, "zsh": zsh, "fish": fish}[args.shell](Tree(args.top)), file=out, end="")
    return 0


class Tree:
    """The parser as the three tables the scripts hold."""

    def __init__(self, top: argparse.ArgumentParser) -> None:
        self.commands: dict[str, list[str]] = {}
        self.options: dict[str, list[str]] = {}
        self.values: dict[str, list[str]] = {}  # PATH@OPTION of an option that takes a value: its choices
        for path, parser in parsers.walk(top):
            key = " ".join((top.prog, *path))  # never empty: a bash array has no "" key
            self.commands[key] = list(parsers.subcommands(parser)) or parsers.choices(parser)
            self.options[key] = []
            for flag, takes_value, choices in parsers.options(parser):
                self.options[key].append(flag)
                if takes_value:
                    self.values[f"{key}{SEP}{flag}"] = list(choices or ())


def _table(declare: str, name: str, table: dict[str, list[str]]) -> str:
    rows = "\n".join(f"    [{shlex.quote(k)}]={shlex.quote(' '.join(v))}" for k, v in table.items())
    return f"{declare} {name}=(\n{rows}\n)\n"


def _tables(declare: str, tree: Tree) -> str:
    return (_table(declare, "_softprobe_commands", tree.commands) + _table(declare, "_softprobe_options", tree.options)
            + _table(declare, "_softprobe_values", tree.values))


HEADER = "# softprobe completion for {shell}, written by `softprobe completion {shell}` from the CLI's parser.\n"

BASH = r"""
_softprobe() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} cmdpath=softprobe word i skip=0
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        if ((skip)); then skip=0; continue; fi
        if [[ $word == -* ]]; then
            [[ $word != *=* && -v "_softprobe_values[${cmdpath}@${word}]" ]] && skip=1
            continue
        fi
        if [[ " ${_softprobe_commands[$cmdpath]} " == *" $word "* ]]; then
            cmdpath="$cmdpath $word"
        fi
    done
    if ((COMP_CWORD > 1)) && [[ $prev == -* && -v "_softprobe_values[${cmdpath}@${prev}]" ]]; then
        local values=${_softprobe_values[${cmdpath}@${prev}]}
        if [[ -n $values ]]; then
            COMPREPLY=($(compgen -W "$values" -- "$cur"))
        else
            COMPREPLY=($(compgen -f -- "$cur"))
        fi
    elif [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "${_softprobe_options[$cmdpath]}" -- "$cur"))
    elif [[ -n ${_softprobe_commands[$cmdpath]} ]]; then
        COMPREPLY=($(compgen -W "${_softprobe_commands[$cmdpath]}" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}
complete -F _softprobe softprobe
"""

ZSH = r"""
_softprobe() {
    local cur=${words[CURRENT]} prev=${words[CURRENT-1]} cmdpath=softprobe word i skip=0
    for (( i = 2; i < CURRENT; i++ )); do
        word=${words[i]}
        if (( skip )); then skip=0; continue; fi
        if [[ $word == -* ]]; then
            [[ $word != *=* ]] && (( ${+_softprobe_values[${cmdpath}@${word}]} )) && skip=1
            continue
        fi
        if [[ " ${_softprobe_commands[$cmdpath]} " == *" $word "* ]]; then
            cmdpath="$cmdpath $word"
        fi
    done
    if (( CURRENT > 2 )) && [[ $prev == -* ]] && (( ${+_softprobe_values[${cmdpath}@${prev}]} )); then
        local values=${_softprobe_values[${cmdpath}@${prev}]}
        if [[ -n $values ]]; then compadd -- ${=values}; else _files; fi
    elif [[ $cur == -* ]]; then
        compadd -- ${=_softprobe_options[$cmdpath]}
    elif [[ -n ${_softprobe_commands[$cmdpath]} ]]; then
        compadd -- ${=_softprobe_commands[$cmdpath]}
    else
        _files
    fi
}
(( $+functions[compdef] )) && compdef _softprobe softprobe
# autoloaded from $fpath, this file is the body of _softprobe: complete now
if [[ $funcstack[1] == _softprobe ]]; then _softprobe "$@"; fi
"""

FISH = r"""
function __softprobe_path --description 'the command path the words typed so far reach'
    set -l tokens (commandline -opc)
    set -e tokens[1]
    set -l cmdpath softprobe
    set -l skip 0
    for word in $tokens
        if test $skip = 1
            set skip 0
            continue
        end
        if string match -q -- '-*' $word
            if not string match -q -- '*=*' $word; and contains -- "$cmdpath@$word" $__softprobe_valued
                set skip 1
            end
            continue
        end
        if contains -- "$cmdpath@$word" $__softprobe_children
            set cmdpath "$cmdpath $word"
        end
    end
    echo $cmdpath
end
complete -c softprobe -f
"""


def bash(tree: Tree) -> str:
    return HEADER.format(shell="bash") + _tables("declare -gA", tree) + BASH


def zsh(tree: Tree) -> str:
    return "#compdef softprobe\n" + HEADER.format(shell="zsh") + _tables("typeset -gA", tree) + ZSH


def fish(tree: Tree) -> str:
    """fish completes by conditions: one `complete` line per command, option and value list,
    each under the command path it belongs to."""
    children = [f"{path}{SEP}{name}" for path, names in tree.commands.items() for name in names]
    lines = [HEADER.format(shell="fish"),
             f"set -g __softprobe_children {' '.join(map(shlex.quote, children))}",
             f"set -g __softprobe_valued {' '.join(map(shlex.quote, tree.values))}", FISH]
    for path, names in tree.commands.items():
        at = shlex.quote(f"test (__softprobe_path) = '{path}'")
        if names:
            lines.append(f"complete -c softprobe -n {at} -a {shlex.quote(' '.join(names))}")
        else:
            lines.append(f"complete -c softprobe -n {at} -F")
        for flag in tree.options[path]:
            spec = f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}"
            choices = tree.values.get(f"{path}{SEP}{flag}")
            value = (f" -x -a {shlex.quote(' '.join(choices))}" if choices else " -r -F") if choices is not None else ""
            lines.append(f"complete -c softprobe -n {at} {spec}{value}")
    return "\n".join(lines) + "\n"
