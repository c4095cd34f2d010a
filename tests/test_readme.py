"""The README a newcomer reads: its Commands table lists exactly the console scripts that setup.cfg
installs (one row each), and every file it links to exists."""
import os
import re

from test_install import REPO, console_scripts


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else len(text)]


def test_commands_table_lists_every_console_script_once():
    readme = open(os.path.join(REPO, "README.md")).read()
    rows = [ln for ln in _section(readme, "Commands").splitlines() if ln.startswith("| `")]
    listed = [re.match(r"\| `([^`\s]+)", ln).group(1) for ln in rows]
    assert sorted(listed) == sorted(console_scripts()), (sorted(set(console_scripts()) - set(listed)),
                                                         sorted(set(listed) - set(console_scripts())))
    assert len(listed) == len(set(listed))


def test_readme_links_resolve_and_unmeasured_claims_say_so():
    readme = open(os.path.join(REPO, "README.md")).read()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if not t.startswith(("http://", "https://"))]
    assert local
    missing = [t for t in local if not os.path.exists(os.path.join(REPO, t))]
    assert not missing, missing
    for m in re.finditer(r"NCCL on GPUs", readme):
        assert "not yet run" in readme[m.start():m.start() + 80], readme[m.start():m.start() + 80]
    assert "## What pretraining is worth" in readme
