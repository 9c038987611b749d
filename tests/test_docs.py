"""The documentation stays true to the code: every `stacnas …` command of a fenced bash block in the README and
docs/ parses against the CLI (and its configuration resolves: presets, option ranges), every script or test file
a block runs exists, and every relative link (and its #anchor) resolves."""
import pathlib
import re
import shlex

import pytest

from stacnas.cli import build_parser
from stacnas.errors import UsageError

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_LIMIT = 12_000  # bytes: the README is a front door; the manual lives in docs/


def _bash_lines(text):
    """The command lines of the text's fenced bash blocks, continuation lines joined."""
    lines = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        lines += [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return lines


def _commands(line):
    """Each command of a shell line, as its words (comments dropped, `&&`, `;` and `|` split)."""
    commands, words = [], []
    for word in shlex.split(line, comments=True):
        if word in ("&&", ";", "|", "||"):
            commands.append(words)
            words = []
        else:
            words.append(word)
    return [c for c in commands + [words] if c]


def _stacnas_args(words):
    """The arguments of a `stacnas …` or `… -m stacnas …` command, or None."""
    if words[0] == "stacnas":
        return words[1:]
    for i in range(len(words) - 1):
        if words[i] == "-m" and words[i + 1] == "stacnas":
            return words[i + 2:]
    return None


def check_command(args):
    """Parse a documented command's arguments as `stacnas` would and resolve its configuration (no run)."""
    from stacnas.runtime.config import resolve
    from stacnas.search import SearchConfig
    from stacnas.train import TrainConfig

    if "--help" in args or "-h" in args:
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(args)
        assert exit_.value.code == 0
        return
    parsed = build_parser().parse_args(args)
    kind = {"search": (SearchConfig, "search"), "cluster": (SearchConfig, "search"), "train": (TrainConfig, "train")}
    if parsed.command in kind and parsed.config is None:  # a --config FILE of the docs is an example, not a file
        cls, command = kind[parsed.command]
        resolve(cls, command, parsed.preset, None, {name: getattr(parsed, name) for name in parsed.config_fields})


def _documented(kind):
    found = []
    for page in PAGES:
        for line in _bash_lines(page.read_text()):
            for words in _commands(line):
                args = _stacnas_args(words)
                if kind == "stacnas" and args is not None:
                    found.append(pytest.param(args, id=f"{page.name}: {' '.join(words)[:60]}"))
                elif kind == "files" and args is None and words[0] in ("python", "python3", "bash"):
                    paths = [w for w in words[1:] if re.match(r"^(benchmarks|tests|stacnas)/\S+\.(py|sh)$", w)]
                    found += [pytest.param(p, id=f"{page.name}: {p}") for p in paths]
    return found


@pytest.mark.parametrize("args", _documented("stacnas"))
def test_documented_command_parses(args):
    check_command(args)


@pytest.mark.parametrize("path", _documented("files"))
def test_documented_script_exists(path):
    assert (ROOT / path).is_file(), f"{path} is run in the docs but does not exist"


@pytest.mark.parametrize("args", [["search", "--preset", "quick", "--epoch", "3"],  # no abbreviations
                                  ["search", "--preset", "no-such-preset"],
                                  ["train", "--preset", "quick", "--epochs", "-1"],
                                  ["bench", "nothing"]])
def test_a_wrong_documented_command_fails_the_check(args):
    with pytest.raises(UsageError):
        check_command(args)


def _slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {_slug(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}


def broken_links(page):
    """The relative links of a Markdown page whose file or #anchor does not exist."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _anchors(file)):
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_the_link_check_finds_a_broken_link(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n\n## A part\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#a-part) [ok](a.md) [file](missing.md) [anchor](a.md#no-part) [web](https://x.org)\n")
    assert broken_links(page) == ["missing.md", "a.md#no-part"]


def test_readme_is_a_front_door():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes: move the detail into a page of docs/"
