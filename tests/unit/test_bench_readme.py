"""bench/README.md's performance table is the one its results file renders (python -m bench.readme).

The README names the `--suite table` results file it was generated from; the table, the CPU per
call and the metrics rows must be exactly what that committed file gives, so a figure typed by
hand, or a results file replaced without regenerating the README, fails here.
"""

from __future__ import annotations

import json

from bench import readme


def test_the_readme_table_is_what_its_results_file_renders() -> None:
    text = readme.README.read_text()
    name = readme.results_file_named(text)
    assert name is not None, "bench/README.md's generated part names no results file"
    path = readme.RESULTS / name
    assert path.exists(), f"{path} (named by bench/README.md) is not in the repository"
    report = json.loads(path.read_text())
    generated = text.split(readme.BEGIN, 1)[1].split(readme.END, 1)[0]
    lines = readme.render_table(report, name)
    missing = [line for line in lines if line and line not in generated]
    assert not missing, f"bench/README.md differs from {name}; run python -m bench.readme {path}: {missing[:3]}"
