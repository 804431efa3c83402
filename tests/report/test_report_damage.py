"""`alignlab report DIR` on a damaged sweep directory (issue 13, class 6).

A tiny study is written by hand once per module (no sweep runs): sweep.yaml, study.json, the SFT
evaluation in runs/sft/, two finished DPO runs (dpo-a, dpo-b) and runs.sqlite. Each test damages a
copy. Expected, per alignlab.report.document's docstring: damage to what every run shares is one
AlignlabError naming the file; a damaged run is skipped and named in the report's "runs" line; the
report never writes runs.sqlite.
"""

import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import alignlab.report as alignlab_report
from alignlab.cli import main
from alignlab.errors import AlignlabError
from alignlab.evaluation.metrics import summarize
from alignlab.study.store import COLUMNS, STATUSES, RunStore
from alignlab.study.results import write_sweep_report

PROMPTS = ["p0", "p1", "p2", "p3"]
GOLD = {"sft": [0.0, 0.5, 1.0, 1.5], "dpo-a": [1.0, 1.5, 2.0, 2.5], "dpo-b": [0.5, 1.0, 1.5, 2.0]}
HYPOTHESIS_EXAMPLES = 200  # examples of the runs.sqlite property below


def samples(gold) -> dict:
    return {"prompt_id": PROMPTS, "gold_score": list(gold), "length": [10.0, 12.0, 14.0, 16.0],
            "kl": [0.5, 0.5, 0.5, 0.5], "ln_kl": [0.05, 0.5 / 12, 0.5 / 14, 0.5 / 16]}


def metrics(gold) -> dict:
    columns = samples(gold)
    return summarize({**{k: np.array(v) for k, v in columns.items() if k != "prompt_id"},
                      "chosen_score": np.array(GOLD["sft"])})


def write_run(directory, gold) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(samples(gold)), directory / "samples.parquet")
    (directory / "metrics.json").write_text(json.dumps(metrics(gold)))


def insert(store_path, name, **values) -> None:
    """A finished run's row, with any column replaced by `values`."""
    row = {"run_id": name, "name": name, "method": "dpo", "params": json.dumps({"beta": 0.1, "seed": 0}),
           "status": "finished", "attempts": 1, "metrics": json.dumps(metrics(GOLD.get(name, GOLD["dpo-a"]))),
           "run_dir": f"runs/{name}", "seconds": 1.0, "error": None, "updated_at": 0.0, **values}
    with sqlite3.connect(store_path) as db:
        db.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
    db.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "sweep"
    out.mkdir()
    (out / "sweep.yaml").write_text("grid_preset: small\nstudy: robustness\n")
    (out / "study.json").write_text(json.dumps({"world": "hand-made", "test prompts": 4}))
    for name, gold in GOLD.items():
        write_run(out / "runs" / name, gold)
    RunStore(out / "runs.sqlite").close()  # the sweep's schema
    insert(out / "runs.sqlite", "dpo-a")
    insert(out / "runs.sqlite", "dpo-b", params=json.dumps({"beta": 0.5, "seed": 0}))
    return out


@pytest.fixture
def study(template, tmp_path):
    """A fresh copy of the tiny study, to damage."""
    return shutil.copytree(template, tmp_path / "sweep")


@pytest.fixture
def no_rendering(monkeypatch):
    """The reader alone: write_report replaced by one returning what it was given (figures are slow)."""
    monkeypatch.setattr(alignlab_report, "write_report",
                        lambda out, runs, sft, context, title, var=None, families=None, looks=(): {"runs": runs,
                                                                                                  "context": context})


def files_of(directory) -> dict:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.name.startswith("runs.sqlite")}


def report_leaves_store_alone(out):
    """Run the report; assert runs.sqlite is byte-identical after it and no journal appeared."""
    before = files_of(out)
    try:
        return write_sweep_report(out)
    finally:
        assert files_of(out) == before


def loosen(store_path) -> None:
    """Rebuild the runs table with its columns but no types or constraints, as another tool might."""
    with sqlite3.connect(store_path) as db:
        db.executescript(f"ALTER TABLE runs RENAME TO old; CREATE TABLE runs ({', '.join(COLUMNS)}, updated_at);"
                         f"INSERT INTO runs SELECT {', '.join(COLUMNS)}, updated_at FROM old; DROP TABLE old;")
    db.close()


# ------------------------------------------------------------------ a sound study, read and rendered

def test_the_tiny_study_reports_both_runs_and_leaves_the_store_alone(study):
    summary = report_leaves_store_alone(study)
    assert summary["context"]["runs"] == "2 finished of 2"
    assert [r["run"] for r in summary["runs"]] == ["sft", "dpo-a", "dpo-b"]  # SFT, then best first
    assert summary["nulls"] == {}


def test_nan_metrics_give_strict_json_with_the_reason_beside(study):
    nan_metrics = metrics(GOLD["dpo-b"])
    nan_metrics["mean_score"]["value"] = float("nan")  # ranks, claims and figures all take it in
    nan_metrics["kl"]["ci_high"] = float("nan")
    nan_metrics["length"]["value"] = float("-inf")
    with sqlite3.connect(study / "runs.sqlite") as db:
        db.execute("UPDATE runs SET metrics=? WHERE name='dpo-b'", (json.dumps(nan_metrics),))
    db.close()
    report_leaves_store_alone(study)

    def refuse(constant):
        raise AssertionError(f"summary.json holds {constant}")

    summary = json.loads((study / "summary.json").read_text(), parse_constant=refuse)
    at = [r["run"] for r in summary["runs"]].index("dpo-b")
    assert summary["runs"][at]["metrics"]["mean_score"]["value"] is None
    assert summary["runs"][at]["metrics"]["kl"]["ci_high"] is None
    assert summary["nulls"][f"/runs/{at}/metrics/mean_score/value"] == "not finite (nan)"
    assert summary["nulls"][f"/runs/{at}/metrics/kl/ci_high"] == "not finite (nan)"
    assert summary["nulls"][f"/runs/{at}/metrics/length/value"] == "not finite (-inf)"
    assert all(reason.startswith("not finite (") for reason in summary["nulls"].values())


def test_text_from_configs_and_data_is_escaped_in_markdown_and_html(study):
    tag, piped = "<img src=x onerror=alert(1)>", "a|b\\|c"  # the backslash must not undo the pipe's escape
    (study / "study.json").write_text(json.dumps({"world": "<script>alert(2)</script>"}))
    with sqlite3.connect(study / "runs.sqlite") as db:
        db.execute("UPDATE runs SET name=?, method=?, params=? WHERE name='dpo-a'",
                   (tag, "<i>m|n</i>", json.dumps({"beta": "<b>x</b>", "seed": 0})))
        db.execute("UPDATE runs SET name=? WHERE name='dpo-b'", (piped,))
    db.close()
    report_leaves_store_alone(study)
    markdown, page = (study / "report.md").read_text(), (study / "report.html").read_text()
    for raw in (tag, "<script>", "<i>", "<b>"):
        assert raw not in markdown and raw not in page, raw
    for escaped in ("&lt;img src=x onerror=alert(1)&gt;", "&lt;script&gt;alert(2)&lt;/script&gt;",
                    "&lt;i&gt;m\\|n&lt;/i&gt;", "beta=&lt;b&gt;x&lt;/b&gt;"):
        assert escaped in markdown, escaped
    assert "| a\\|b\\\\\\|c |" in markdown  # its row in the table of all runs: one cell, not three
    assert "a|b" not in markdown
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "<td>a|b\\|c</td>" in page


@pytest.mark.filterwarnings("error::UserWarning")  # matplotlib warns of a glyph missing for a raw control character
def test_control_characters_and_non_web_links_from_names_reach_no_report(study):
    """Issue 28: run and method names copied into the report with raw ESC, NUL and BEL, and Markdown
    links to javascript: that a viewer would follow."""
    hostile = "\x1b[2J\x1b]0;pwned\x07run\x00[click](javascript:alert(1))\u202egnp.exe"
    with sqlite3.connect(study / "runs.sqlite") as db:
        db.execute("UPDATE runs SET name=?, method=?, params=? WHERE name='dpo-a'",
                   (hostile, "m\x1b[31m![x](data:text/html,hi)", json.dumps({"beta": "[y]( JavaScript:z)", "seed": 0})))
        db.execute("UPDATE runs SET name=? WHERE name='dpo-b'", ("[fine](https://example.org/ok)",))
    db.close()
    report_leaves_store_alone(study)
    for page in ((study / "report.md").read_text(), (study / "report.html").read_text()):
        for raw in ("\x1b", "\x00", "\x07", "\u202e"):
            assert raw not in page, repr(raw)
        assert "\\x1b[2J" in page and "\\u202e" in page  # shown as escapes, not dropped
    markdown = (study / "report.md").read_text()
    assert not re.search(r"(?<!\\)\]\(\s*(?!https?://|#|figures/)", markdown)  # every other link target is inert
    assert "[fine](https://example.org/ok)" in markdown


ACTIVE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


@settings(max_examples=300, deadline=None)
@given(text=st.lists(st.text(st.characters(codec="utf-8"), max_size=4) | st.sampled_from(
    ["](", "javascript:", "data:", "http://", "https://", "\\", "\x1b", "\x00", "\u202e", "[", "]", "(", " "]),
    max_size=12).map("".join))
def test_any_name_renders_without_control_characters_or_live_non_web_links(text):
    from alignlab.report.blocks import Table
    from alignlab.report.render import html_table, markdown_table

    markdown = markdown_table(Table([text], [[text]]))
    page = html_table(Table([text], [[text]]))
    assert not ACTIVE.search(markdown) and not ACTIVE.search(page)
    # Every `](` left unescaped (an even run of backslashes before it) opens an http(s) target.
    for opening in re.finditer(r"(\\*)\]\(", markdown):
        if len(opening.group(1)) % 2 == 0:
            assert re.match(r"\s*https?://", markdown[opening.end():], re.IGNORECASE), markdown
    assert "<" not in page.replace("<div class=scroll><table><thead><tr><th>", "").replace(
        "</th></tr></thead><tbody><tr><td>", "").replace("</td></tr></tbody></table></div>", "")


def test_a_figures_folder_that_links_elsewhere_is_refused_and_its_pictures_kept(study, tmp_path, capsys):
    """Issue 28: `alignlab report` deleted every *.png of the folder figures/ linked to, then wrote into it."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "wedding.png").write_bytes(b"a person's picture")
    (study / "figures").symlink_to(photos)
    assert main(["report", str(study)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "figures: is a symbolic link" in err and "Traceback" not in err
    assert sorted(p.name for p in photos.iterdir()) == ["wedding.png"]
    assert not (study / "report.html").exists()


def test_a_picture_a_person_put_in_figures_survives_a_new_report(study):
    """Issue 28: the stale-figure clean-up deleted every *.png the new report did not draw."""
    report_leaves_store_alone(study)
    (study / "figures" / "annotated.png").write_bytes(b"a person's annotated figure")
    with sqlite3.connect(study / "runs.sqlite") as db:
        db.execute("DELETE FROM runs WHERE name='dpo-b'")  # fewer runs: some figures are no longer drawn
    db.close()
    summary = report_leaves_store_alone(study)
    drawn = {Path(f["file"]).name for f in summary["figures"]}
    assert {p.name for p in (study / "figures").glob("*.png")} == drawn | {"annotated.png"}


# ------------------------------------------------------------------ runs.sqlite itself damaged

def sqlite_bytes(study) -> bytes:
    return (study / "runs.sqlite").read_bytes()


@pytest.mark.parametrize("damage, message", [
    (lambda study: b"\x89not a database at all" * 300, "cannot be read"),
    (lambda study: sqlite_bytes(study)[:50], "cannot be read"),  # cut inside the header
    (lambda study: sqlite_bytes(study)[:4096], "cannot be read"),  # only the first page: the schema
    (lambda study: b"", "no 'runs' table"),  # an empty file is an empty SQLite database
])
def test_a_store_that_is_not_sqlite_or_truncated_is_one_clear_error(study, damage, message, no_rendering):
    (study / "runs.sqlite").write_bytes(damage(study))
    with pytest.raises(AlignlabError, match=message) as err:
        report_leaves_store_alone(study)
    assert str(err.value).startswith(f"{study / 'runs.sqlite'}: ")
    assert "new --out" in str(err.value)


@pytest.mark.parametrize("schema, message", [
    ("CREATE TABLE other (x)", "no 'runs' table"),
    ("CREATE TABLE runs (run_id, name, method)", "lacks the column\\(s\\) params, status, attempts, metrics"),
])
def test_a_foreign_sqlite_file_is_refused_and_left_unchanged(study, schema, message, no_rendering):
    (study / "runs.sqlite").unlink()
    with sqlite3.connect(study / "runs.sqlite") as db:
        db.execute(schema)
    db.close()
    with pytest.raises(AlignlabError, match=message):
        report_leaves_store_alone(study)
    # Nothing was added to the foreign file: still only its own table.
    with sqlite3.connect(study / "runs.sqlite") as db:
        assert [row[0] for row in db.execute("SELECT name FROM sqlite_master")] == [schema.split()[2]]
    db.close()


@pytest.mark.slow
def test_a_store_a_killed_sweep_left_mid_change_asks_to_resume_the_sweep(study, no_rendering):
    # A writer killed inside a transaction leaves a hot journal that only a writer may roll back.
    killed = subprocess.run([sys.executable, "-c", (
        "import os, sqlite3\n"
        "db = sqlite3.connect('runs.sqlite', isolation_level=None)\n"
        "db.execute('PRAGMA cache_size=1'); db.execute('BEGIN IMMEDIATE')\n"
        "for i in range(500): db.execute('UPDATE runs SET error=?', ('x' * 4000,))\n"
        "os._exit(9)")], cwd=study)
    assert killed.returncode == 9 and (study / "runs.sqlite-journal").exists()
    with pytest.raises(AlignlabError, match="a sweep was stopped in the middle of changing it .* resume the sweep"):
        report_leaves_store_alone(study)


# ------------------------------------------------------------------ one damaged row among good ones

@pytest.mark.parametrize("column, value, problem", [
    ("params", "{beta: 1", "runs.sqlite row 2 ('dpo-b'): params: not JSON"),
    ("params", "[0.5]", "runs.sqlite row 2 ('dpo-b'): params: not a JSON object"),
    ("params", '{"beta": "\\ud800"}', "runs.sqlite row 2 ('dpo-b'): params: holds text that is not valid Unicode"),
    ("params", '{"beta": [1, 2]}', "'dpo-b': runs.sqlite params: 'beta' is [1, 2], not text, a number or true/false"),
    ("metrics", None, "'dpo-b': runs.sqlite metrics: None is not a JSON object"),
    ("metrics", '{"mean_score": {"value": "high"}}', "'dpo-b': runs.sqlite metrics: 'mean_score'.value is 'high'"),
    ("metrics", '{"kl": null}', "'dpo-b': runs.sqlite metrics: mean_score is not measured"),
    ("status", "done", "runs.sqlite row 2 ('dpo-b'): status: 'done' is not one of pending, running, finished, failed"),
    ("name", b"\xff\xfe", "runs.sqlite row 2: name: b'\\xff\\xfe' is not UTF-8 text"),
    ("name", None, "runs.sqlite row 2: name: NULL, not text"),
    ("attempts", "two", "runs.sqlite row 2 ('dpo-b'): attempts: b'two' is not a whole number"),
    ("run_dir", "../outside", "row 2 ('dpo-b'): run_dir: '../outside' is not a directory inside the sweep directory; "
                              "refused"),
    ("run_dir", "runs/dpo-b/../../../outside", "row 2 ('dpo-b'): run_dir: 'runs/dpo-b/../../../outside' is not"),
    ("run_dir", "ABSOLUTE", "is not a directory inside the sweep directory; refused"),
])
def test_a_damaged_row_is_skipped_and_named_and_never_read_from(study, column, value, problem, no_rendering):
    # A complete run outside the sweep directory, and one inside it given as an absolute path:
    # neither may be read.
    write_run(study.parent / "outside", GOLD["dpo-b"])
    value = str(study / "runs" / "dpo-b") if value == "ABSOLUTE" else value
    loosen(study / "runs.sqlite")  # so that NULL fits where the schema says NOT NULL
    with sqlite3.connect(study / "runs.sqlite") as db:
        db.execute(f"UPDATE runs SET {column}=? WHERE run_id='dpo-b'", (value,))
    db.close()
    summary = report_leaves_store_alone(study)
    assert [run.name for run in summary["runs"]] == ["dpo-a"]
    line = summary["context"]["runs"]
    assert line.startswith("1 finished of 2; skipped as damaged: ") and problem in line


def test_a_run_with_damaged_samples_is_skipped_and_named(study, no_rendering):
    (study / "runs" / "dpo-a" / "samples.parquet").write_bytes(b"PAR1 truncated")
    pq.write_table(pa.table({**samples(GOLD["dpo-b"]), "prompt_id": ["q0", "q1", "q2", "q3"]}),
                   study / "runs" / "dpo-b" / "samples.parquet")
    insert(study / "runs.sqlite", "dpo-c", run_dir="runs/dpo-c")
    write_run(study / "runs" / "dpo-c", GOLD["dpo-a"])
    pq.write_table(pa.table({"prompt_id": PROMPTS, "gold_score": GOLD["dpo-a"]}), study / "runs" / "dpo-c" /
                   "samples.parquet")
    with pytest.raises(AlignlabError) as err:
        report_leaves_store_alone(study)
    message = str(err.value)
    assert message.startswith(f"{study}: no finished run to report; skipped as damaged: 'dpo-a': ")
    assert f"{study / 'runs' / 'dpo-a' / 'samples.parquet'}: cannot be read" in message
    insert(study / "runs.sqlite", "good")
    write_run(study / "runs" / "good", GOLD["dpo-a"])
    line = report_leaves_store_alone(study)["context"]["runs"]
    assert line.startswith("1 finished of 4; skipped as damaged: 'dpo-a': ")
    assert f"'dpo-b': evaluated on other test prompts than {study / 'runs' / 'sft'}" in line
    assert f"'dpo-c': {study / 'runs' / 'dpo-c' / 'samples.parquet'}: lacks the column(s) length" in line


def test_a_run_without_metrics_json_is_unfinished_not_damaged(study, no_rendering):
    (study / "runs" / "dpo-b" / "metrics.json").unlink()
    assert report_leaves_store_alone(study)["context"]["runs"] == "1 finished of 2; unfinished or failed: dpo-b"


# ------------------------------------------------------------------ what every run shares

def write_file(relative, content):
    def damage(study):
        path = study / relative
        if content is None:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        elif isinstance(content, dict):  # a parquet table
            pq.write_table(pa.table(content), path)
        else:
            path.write_bytes(content)
    return damage


@pytest.mark.parametrize("damage, file, message", [
    (write_file("study.json", None), "study.json", "missing; rerun the sweep"),
    (write_file("study.json", b'{"world": '), "study.json", "not JSON"),
    (write_file("study.json", b'["world"]'), "study.json", "\\['world'\\] is not a JSON object"),
    (write_file("study.json", b"\xff\xfe{}"), "study.json", "can't decode"),
    (write_file("sweep.yaml", b"grid: [\n"), "sweep.yaml", "invalid YAML"),
    (write_file("sweep.yaml", b"- a list\n"), "sweep.yaml", "must be a mapping"),
    (write_file("runs/sft", None), "runs/sft", "missing \\(the SFT model's evaluation\\)"),
    (write_file("runs/sft/metrics.json", None), "runs/sft/metrics.json", "missing"),
    (write_file("runs/sft/metrics.json", b"NaN"), "runs/sft/metrics.json", "metrics: nan is not a JSON object"),
    (write_file("runs/sft/metrics.json", b'{"kl": null}'), "runs/sft/metrics.json", "mean_score is not measured"),
    (write_file("runs/sft/samples.parquet", None), "runs/sft/samples.parquet", "cannot be read"),
    (write_file("runs/sft/samples.parquet", b"\x00" * 64), "runs/sft/samples.parquet", "cannot be read"),
    (write_file("runs/sft/samples.parquet", {"prompt_id": PROMPTS, "gold_score": GOLD["sft"]}),
     "runs/sft/samples.parquet", "lacks the column\\(s\\) length"),
    (write_file("runs/sft/samples.parquet", {"prompt_id": PROMPTS, "gold_score": ["a", "b", "c", "d"],
                                            "length": [1.0] * 4}),
     "runs/sft/samples.parquet", "column gold_score holds other than numbers"),
    (write_file("runs/sft/samples.parquet", {"prompt_id": pa.array([], pa.string()),
                                            "gold_score": pa.array([], pa.float64()),
                                            "length": pa.array([], pa.float64())}),
     "runs/sft/samples.parquet", "prompt_id is empty"),
])
def test_damage_to_what_every_run_shares_is_one_error_naming_the_file(study, damage, file, message, no_rendering):
    damage(study)
    with pytest.raises(AlignlabError, match=message) as err:
        report_leaves_store_alone(study)
    assert str(err.value).startswith(f"{study / file}:")


def test_the_cli_prints_one_line_and_exits_2(study, capsys):
    (study / "runs.sqlite").write_bytes(b"x" * 10_000)
    assert main(["report", str(study)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"alignlab: error: {study / 'runs.sqlite'}: cannot be read")
    assert "Traceback" not in err


# ------------------------------------------------------------------ any row at all

def text_values():
    return st.one_of(st.text(max_size=30), st.text(min_size=1, max_size=3).map(lambda t: t * 50_000))


def json_objects():
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers().map(lambda i: i * 10 ** 400),
                        st.floats(), text_values())
    nested = st.recursive(scalars, lambda children: st.lists(children, max_size=3)
                          | st.dictionaries(st.text(max_size=5), children, max_size=3), max_leaves=8)
    return st.dictionaries(st.text(max_size=10), nested, max_size=4).map(json.dumps)


def flat_params():
    """What a sweep writes: an object of text, numbers and true/false."""
    values = st.one_of(st.booleans(), st.integers(), st.floats(), text_values())
    return st.dictionaries(st.text(max_size=10), values, max_size=4).map(json.dumps)


def metrics_objects():
    entries = st.fixed_dictionaries({}, optional={part: st.one_of(st.none(), st.floats(), st.integers(), st.text())
                                                  for part in ("value", "ci_low", "ci_high")})
    return st.dictionaries(st.sampled_from(["mean_score", "kl", "ln_kl", "length", "win_vs_sft", "x"]),
                           st.none() | entries, max_size=6).map(json.dumps)


# Anything SQLite can hold: NULL, integers, reals, text (huge too), blobs (invalid UTF-8, an encoded
# surrogate), invalid JSON and JSON with lone surrogate escapes. (Python cannot hand SQLite a str
# holding a surrogate; encoded as bytes or escaped in JSON is how one reaches a store.)
ANY = st.one_of(st.none(), st.integers(min_value=-2 ** 63, max_value=2 ** 63 - 1), st.floats(allow_nan=False),
                text_values(), st.binary(max_size=40), st.just(b"\xed\xa0\x80"), st.just("{"),
                st.just('"\\udc80"'), st.just('{"a": "\\ud800"}'))
PLAUSIBLE = {
    "run_id": text_values(), "name": text_values(), "method": st.sampled_from(["dpo", "simpo", "", "$\\x$", "<i>"]),
    "params": flat_params() | json_objects(), "status": st.just("finished") | st.sampled_from(STATUSES),
    "attempts": st.integers(min_value=-2 ** 63, max_value=2 ** 63 - 1),
    "metrics": metrics_objects() | st.just(json.dumps(metrics(GOLD["dpo-a"]))),
    "run_dir": st.sampled_from(["runs/dpo-a", "runs/sft"])
               | st.sampled_from(["runs", ".", "", "../../etc", "/etc", "runs/../..", "runs/dpo-a/../../..",
                                  "runs/missing", "runs/dpo-a\x00"]),
    "seconds": st.floats(), "error": text_values(),
}
# Rows of plausible values only (often a run the report takes in), or with anything in any column.
ROWS = st.lists(st.fixed_dictionaries(PLAUSIBLE)
                | st.fixed_dictionaries({column: ANY | PLAUSIBLE[column] for column in COLUMNS}), max_size=3)


@pytest.mark.slow  # seconds each: the full suite runs it, the quick loop does not
@settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(rows=ROWS, loose=st.booleans())
def test_any_rows_give_a_report_or_an_alignlab_error_and_the_store_is_never_written(template, tmp_path_factory,
                                                                                     rows, loose):
    study = shutil.copytree(template, tmp_path_factory.mktemp("any") / "sweep")
    if loose:
        loosen(study / "runs.sqlite")
    with sqlite3.connect(study / "runs.sqlite") as db:
        for row in rows:
            db.execute(f"INSERT OR IGNORE INTO runs ({', '.join(row)}, updated_at) VALUES "
                       f"({', '.join('?' * len(row))}, 0)", tuple(row.values()))
    db.close()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(alignlab_report, "write_report",
                      lambda out, runs, sft, context, title, var=None, families=None, looks=(): {"runs": runs,
                                                                                                  "context": context})
        try:
            summary = report_leaves_store_alone(study)
        except AlignlabError as err:
            event("an AlignlabError")
            assert len(str(err)) < 2000  # inputs echoed in part only
        else:
            assert {"dpo-a", "dpo-b"} <= {run.name for run in summary["runs"]}
            event(f"{len(summary['runs'])} runs reported")
            event("a damaged run named" if "skipped as damaged" in summary["context"]["runs"] else "none damaged")
    shutil.rmtree(study.parent)
