"""Find, and on request add, the module's import in the host's NixOS configuration."""

from __future__ import annotations

import posixpath
import re

COMMENTS = re.compile(r"#[^\n]*|/\*.*?\*/", re.S)


def import_path(module_dir: str, config_dir: str) -> str:
    """How a file in `config_dir` names the module directory: ./pluto."""
    return "./" + posixpath.relpath(module_dir, config_dir)


def imports_module(text: str, module_dir: str, config_dir: str) -> bool:
    """Whether the Nix source refers to the module directory as an import."""
    code = COMMENTS.sub("", text)
    relative = re.escape(import_path(module_dir, config_dir))
    absolute = re.escape(module_dir)
    return (
        re.search(rf"(?<![\w./-])(?:{relative}|{absolute})(?:/default\.nix)?(?![\w.-])", code)
        is not None
    )


def add_import(text: str, module_dir: str, config_dir: str) -> str | None:
    """`text` with the module added to its `imports` list, or None if there is no place for it.

    Adds to an existing `imports = [` list; otherwise opens one at the start of
    the module's attribute set. Comments are left as they are.
    """
    line = import_path(module_dir, config_dir)
    code = COMMENTS.sub(lambda m: " " * len(m.group()), text)
    existing = re.search(r"\bimports\s*=\s*\[", code)
    if existing:
        return f"{text[: existing.end()]}\n    {line}{text[existing.end() :]}"
    body = re.search(r":\s*\{", code) or re.match(r"\s*\{", code)
    if body is None:
        return None
    return f"{text[: body.end()]}\n  imports = [ {line} ];{text[body.end() :]}"


def remove_import(text: str, module_dir: str, config_dir: str) -> str:
    """`text` without the module in its imports (a line of its own, or an item of a list)."""
    relative = re.escape(import_path(module_dir, config_dir))
    absolute = re.escape(module_dir)
    item = rf"(?:{relative}|{absolute})(?:/default\.nix)?"
    # `  imports = [ ./pluto ];` as --add-import writes it into a file without imports
    text = re.sub(rf"\n[ \t]*imports\s*=\s*\[\s*{item}\s*\];[ \t]*(?=\n)", "", text)
    # an item on its own line, then one among others
    text = re.sub(rf"\n[ \t]*{item}[ \t]*(?=\n)", "", text)
    return re.sub(rf"(?<=[\s\[]){item}(?=[\s\]])\s?", "", text)
