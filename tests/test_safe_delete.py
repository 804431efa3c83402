"""Every clean-up deletes only what alignlab wrote, never through a link (issue 28, class 1).

`alignlab.safe_delete.remove` is the one deletion every clean-up uses; `WrittenFiles` is the manifest
of files that outlive their writer (a report's figures). Each test places a file alignlab did not
write somewhere a clean-up could reach it, and checks that it survives.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignlab import atomic
from alignlab.errors import AlignlabError
from alignlab.output_dirs import WrittenFiles
from alignlab.safe_delete import check_no_link, remove


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder of the user's that no clean-up may touch, holding a picture."""
    folder = tmp_path / "holiday-photos"
    folder.mkdir()
    (folder / "beach.png").write_bytes(b"\x89PNG a user's own picture")
    return folder


def test_a_link_on_the_way_is_refused_and_its_target_kept(tmp_path, outside):
    root = tmp_path / "study"
    root.mkdir()
    (root / "figures").symlink_to(outside)
    with pytest.raises(AlignlabError, match=r"figures: is a symbolic link to .*holiday-photos.*Remove the link"):
        remove(root / "figures" / "beach.png", root)
    assert (outside / "beach.png").exists()


def test_a_link_is_removed_as_a_link_and_links_inside_a_directory_are_not_followed(tmp_path, outside):
    root = tmp_path / "run"
    (root / "model").mkdir(parents=True)
    (root / "model" / "photos").symlink_to(outside)
    (root / "alias").symlink_to(outside)
    remove(root / "alias", root)
    remove(root / "model", root)
    assert not (root / "alias").is_symlink() and not (root / "model").exists()
    assert (outside / "beach.png").read_bytes().endswith(b"own picture")


def test_a_path_outside_the_root_is_refused(tmp_path, outside):
    root = tmp_path / "run"
    root.mkdir()
    with pytest.raises(AlignlabError, match="lies outside"):
        remove(root / ".." / "holiday-photos" / "beach.png", root)
    assert (outside / "beach.png").exists()


def test_the_root_itself_may_be_a_link(tmp_path):
    real = tmp_path / "real"
    (real / "figures").mkdir(parents=True)
    (tmp_path / "via-link").symlink_to(real)
    check_no_link(tmp_path / "via-link" / "figures", tmp_path / "via-link")  # the user's own choice of path


def test_written_files_deletes_only_its_own_stale_files(tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir()
    for name in ("a.png", "b.png"):
        (figures / name).write_bytes(b"alignlab's")
    WrittenFiles(figures).replace_with(["a.png", "b.png"], tmp_path)
    (figures / "mine.png").write_bytes(b"a person's annotated copy")
    WrittenFiles(figures).replace_with(["a.png"], tmp_path)
    assert sorted(p.name for p in figures.iterdir()) == [WrittenFiles.MANIFEST, "a.png", "mine.png"]
    assert json.loads((figures / WrittenFiles.MANIFEST).read_text()) == ["a.png"]


# A manifest is a file in the user's folder: whatever it says, nothing outside the folder goes.
manifest_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(
        ["../outside.txt", "/etc/hostname", "..", ".", "", "sub/inner.txt", "link.png", "kept.png",
         WrittenFiles.MANIFEST, "sub"]) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(manifest=manifest_values)
def test_any_manifest_deletes_nothing_outside_its_folder_and_never_raises(tmp_path_factory, manifest):
    base = tmp_path_factory.mktemp("manifest")
    figures = base / "study" / "figures"
    (figures / "sub").mkdir(parents=True)
    (base / "outside.txt").write_text("the user's")
    (figures / "sub" / "inner.txt").write_text("the user's")
    (figures / "kept.png").write_bytes(b"written now")
    (figures / "link.png").symlink_to(base / "outside.txt")
    (figures / WrittenFiles.MANIFEST).write_text(json.dumps(manifest))
    WrittenFiles(figures).replace_with(["kept.png"], base / "study")
    assert (base / "outside.txt").read_text() == "the user's"
    assert (figures / "sub" / "inner.txt").read_text() == "the user's"
    assert (figures / "kept.png").exists()
    assert json.loads((figures / WrittenFiles.MANIFEST).read_text()) == ["kept.png"]


def test_replacing_a_directory_through_a_link_removes_the_link_not_its_target(tmp_path, outside):
    """atomic_dir over a path that is a link (a cache entry someone replaced): the link goes, the
    folder it pointed to stays whole."""
    target = tmp_path / "cache" / "entry"
    target.parent.mkdir()
    target.symlink_to(outside)
    with atomic.atomic_dir(target) as staged:
        (staged / "weights.bin").write_bytes(b"new")
    assert not target.is_symlink() and (target / "weights.bin").exists()
    assert sorted(os.listdir(outside)) == ["beach.png"]


def test_resuming_a_sweep_whose_figures_link_elsewhere_is_refused_before_any_run(tmp_path, outside):
    """The sweep's report runs last: a linked figures/ is refused when the sweep resumes, not hours later."""
    from alignlab.study.config import StudyConfig
    from alignlab.study.sweep import open_sweep_dir

    config = StudyConfig(out=str(tmp_path / "sweep"), grid_preset="small")
    assert open_sweep_dir(config) is False
    (tmp_path / "sweep" / "figures").symlink_to(outside)
    with pytest.raises(AlignlabError, match="figures: is a symbolic link"):
        open_sweep_dir(config)
    assert sorted(os.listdir(outside)) == ["beach.png"]
