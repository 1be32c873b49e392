"""Generates oplog's synchronous modules from their asyncio sources.

Every I/O path is written once, for asyncio, in ``python/oplog/<name>_async.py``; this script
writes ``python/oplog/<name>.py`` from it (``make sync``), and ``--check`` (run by ``make lint``)
fails when a committed sync module is not what its source gives.

The conversion works on tokens, so comments and layout survive; ``ruff format`` then re-wraps
what got shorter. It:

- drops ``async`` (``async def``, ``async with``, ``async for``) and ``await``, and the
  parentheses that only held an awaited call: ``(await f()).g()`` becomes ``f().g()``;
- turns ``Awaitable[T]`` into ``T``, and ``AsyncGenerator[Y, S]`` into ``Generator[Y, S, None]``;
- renames the names in :data:`RENAMES` (the asyncio names to their sync twins), also in
  strings and comments, as whole words;
- replaces a line that ends with a ``# sync: <code>`` comment by ``<code>`` (same indentation),
  and drops one that ends with ``# sync: -``: for the few lines that differ otherwise.
"""

from __future__ import annotations

import argparse
import difflib
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "python" / "oplog"

# The asyncio source of each generated module, by module name.
MODULES = ["consumer", "log", "replay", "transaction", "writer"]

RENAMES = {
    "AsyncConnection": "Connection",
    "AsyncCursor": "Cursor",
    "ANO_BLOCK": "NO_BLOCK",
    "AbstractAsyncContextManager": "AbstractContextManager",
    "AsyncConsumer": "Consumer",
    "AsyncExitStack": "ExitStack",
    "AsyncGenerator": "Generator",
    "AsyncIterable": "Iterable",
    "AsyncIterator": "Iterator",
    "AsyncOplog": "Oplog",
    "AsyncReplayer": "Replayer",
    "AsyncServerCursor": "ServerCursor",
    "AsyncWriter": "Writer",
    "AEvent": "Event",
    "StopAsyncIteration": "StopIteration",
    "__anext__": "__next__",
    "aclose": "close",
    "asynccontextmanager": "contextmanager",
    "acursor": "cursor",
    "aexecute": "execute",
    "aexecute_in_order": "execute_in_order",
    "asend_in_order": "send_in_order",
    "enter_async_context": "enter_context",
    "asleep": "sleep",
    "await_event": "wait_event",
    "consumer_async": "consumer",
    "log_async": "log",
    "replay_async": "replay",
    "transaction_async": "transaction",
    "writer_async": "writer",
}
_WORDS = re.compile(r"\b(" + "|".join(map(re.escape, RENAMES)) + r")\b")
_DIRECTIVE = re.compile(r"#\s*sync:\s*(.*)$")

HEADER = (
    "# Generated from {source} by scripts/async_to_sync.py: do not edit.\n"
    "# Edit the asyncio source, then run `make sync`.\n"
)


def _rename_words(text: str) -> str:
    return _WORDS.sub(lambda m: RENAMES[m.group(1)], text)


def _matching(tokens: list[tokenize.TokenInfo], start: int) -> int:
    """The index of the bracket closing the one at `start`."""
    depth = 0
    for i in range(start, len(tokens)):
        if tokens[i].type == tokenize.OP and tokens[i].string in "([{":
            depth += 1
        elif tokens[i].type == tokenize.OP and tokens[i].string in ")]}":
            depth -= 1
            if depth == 0:
                return i
    raise SyntaxError(f"unbalanced bracket at line {tokens[start].start[0]}")


def _is_primary(tokens: list[tokenize.TokenInfo], start: int, end: int) -> bool:
    """Whether tokens[start:end] form one primary (a name with calls, attributes and
    subscripts), so that parentheses around it can go."""
    i = start
    while i < end:
        tok = tokens[i]
        if tok.type == tokenize.OP and tok.string in "([":
            i = _matching(tokens, i) + 1
            continue
        if tok.type == tokenize.OP and tok.string != ".":
            return False
        if tok.type not in (tokenize.NAME, tokenize.OP, tokenize.NL):
            return False
        i += 1
    return True


def convert(source: str) -> str:
    """The sync module's text for an asyncio module's `source` (before formatting)."""
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    lines = source.splitlines(keepends=True)
    # Edits as (start, end, replacement) over (row, col) positions; applied from the end.
    edits: list[tuple[tuple[int, int], tuple[int, int], str]] = []

    def drop(i: int) -> None:
        """Drops token i and the blanks after it on its line."""
        tok = tokens[i]
        row, col = tok.end
        line = lines[row - 1]
        while col < len(line) and line[col] == " ":
            col += 1
        edits.append((tok.start, (row, col), ""))

    replaced_rows: set[int] = set()
    for tok in tokens:
        if tok.type == tokenize.COMMENT and (m := _DIRECTIVE.search(tok.string)):
            row = tok.start[0]
            replaced_rows.add(row)
            line = lines[row - 1]
            indent = line[: len(line) - len(line.lstrip())]
            code = m.group(1).strip()
            lines[row - 1] = "" if code == "-" else f"{indent}{code}\n"
    for i, tok in enumerate(tokens):
        if tok.start[0] in replaced_rows:
            continue
        if tok.type == tokenize.NAME and tok.string == "async":
            drop(i)
        elif tok.type == tokenize.NAME and tok.string == "await":
            drop(i)
            before = tokens[i - 1]
            if before.type == tokenize.OP and before.string == "(":
                close = _matching(tokens, i - 1)
                after = tokens[close + 1] if close + 1 < len(tokens) else None
                if (
                    after is not None
                    and after.type == tokenize.OP
                    and after.string == "."
                    and _is_primary(tokens, i + 1, close)
                ):
                    edits.append((before.start, before.end, ""))
                    edits.append((tokens[close].start, tokens[close].end, ""))
        elif tok.type == tokenize.NAME and tok.string == "AsyncGenerator":
            # AsyncGenerator[Y, S] is Generator[Y, S, None]: a generator returns nothing.
            edits.append((tok.start, tok.end, "Generator"))
            opening = tokens[i + 1]
            if opening.type == tokenize.OP and opening.string == "[":
                close = tokens[_matching(tokens, i + 1)]
                edits.append((close.start, close.start, ", None"))
        elif tok.type == tokenize.NAME and tok.string == "Awaitable":
            opening = tokens[i + 1]
            if opening.type == tokenize.OP and opening.string == "[":
                close = _matching(tokens, i + 1)
                edits.append((tok.start, opening.end, ""))
                edits.append((tokens[close].start, tokens[close].end, ""))
        elif tok.type in (tokenize.NAME, tokenize.STRING, tokenize.COMMENT):
            renamed = _rename_words(tok.string)
            if renamed != tok.string:
                edits.append((tok.start, tok.end, renamed))
    for (srow, scol), (erow, ecol), text in sorted(edits, reverse=True):
        if srow in replaced_rows:
            continue
        head = lines[srow - 1][:scol]
        tail = lines[erow - 1][ecol:]
        lines[srow - 1 : erow] = [head + text + tail]
    return "".join(lines)


def _ruff(args: list[str], text: str, name: str) -> str:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ruff"), *args, "--stdin-filename", name, "-"],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if result.returncode != 0:
        raise SystemExit(f"ruff {' '.join(args)} failed on {name}:\n{result.stderr}")
    return result.stdout


def generate(module: str) -> str:
    """The text of the sync module generated from ``<module>_async.py``."""
    source_path = PACKAGE / f"{module}_async.py"
    text = convert(source_path.read_text())
    target = str((PACKAGE / f"{module}.py").relative_to(ROOT))
    # Imports sorted and pruned; `for x in y: yield x` (an async generator's only way) as
    # `yield from y`.
    fixes = ["--fix", "--unsafe-fixes", "--select", "I,F401,UP028", "--quiet", "--exit-zero"]
    text = _ruff(["check", *fixes], text, target)
    text = _ruff(["format", "--quiet"], text, target)
    return HEADER.format(source=source_path.relative_to(ROOT)) + text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if a module is not current")
    args = parser.parse_args()
    stale = []
    for module in MODULES:
        path = PACKAGE / f"{module}.py"
        text = generate(module)
        current = path.read_text() if path.exists() else ""
        if text == current:
            continue
        if args.check:
            stale.append(path)
            sys.stdout.writelines(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    str(path.relative_to(ROOT)),
                    "generated",
                )
            )
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"not current (run `make sync`): {', '.join(str(p.name) for p in stale)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
