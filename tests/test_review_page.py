"""The review page (issue 24) in a real browser: Debian's Chromium driven by Playwright, WebGL2 from SwiftShader.

A real `shapeqc analyse` run on the TotalSegmentator example, whose CT lies beside it (`v2_ct.nii.gz`, found by the
documented rule), is opened from file:// as a reviewer would; then `shapeqc reviews` on what the page exported."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shapeqc import cli
from shapeqc.bundle.loading import load_bundle
from shapeqc.judging.analysis import analyse_organ
from shapeqc.outputs.images import image_beside
from shapeqc.outputs.reviews import compare_reviews, read_reviews
from shapeqc.runs.cases import discover_cases
from shapeqc.transforms.volume_io import write_volume

ROOT = Path(__file__).resolve().parents[1]
ADRENAL = ROOT / "bundles" / "adrenal_gland"
CHROMIUM_ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise FileNotFoundError("the browser tests need Debian's chromium (apt-get install -y chromium; .ci/run "
                                "installs it when missing)")
    return found


@pytest.fixture(scope="module")
def reviewed_run(tmp_path_factory, totalseg):
    out = tmp_path_factory.mktemp("review") / "out"
    assert cli.main(["analyse", str(totalseg / "v2_multilabel_seg.nii.gz"), "--bundle", str(ADRENAL),
                     "--output", str(out), "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def test_the_ct_beside_a_totalsegmentator_output_is_found_and_shown(reviewed_run, totalseg):
    assert image_beside(totalseg / "v2_multilabel_seg.nii.gz") == totalseg / "v2_ct.nii.gz"
    records = json.loads((reviewed_run / "report.json").read_text())
    judged = [r for r in records if r["status"] in ("ok", "outlier")]
    assert len(judged) == 2
    assert all(r["outputs"]["image"].endswith("v2_ct.nii.gz") and not any("image" in w for w in r["warnings"])
               for r in judged)


def test_a_mismatched_image_is_a_warning_not_an_error(tmp_path, adrenal_val_masks):
    mask_path = write_volume(tmp_path / "gland.nii.gz", adrenal_val_masks[3], np.eye(4))
    write_volume(tmp_path / "gland_ct.nii.gz", np.zeros((10, 10, 10), np.int16), np.eye(4))  # another grid
    out = tmp_path / "out"
    assert cli.main(["analyse", str(mask_path), "--bundle", str(ADRENAL), "--output", str(out),
                     "--device", "cpu"]) == 0
    [record] = json.loads((out / "report.json").read_text())
    assert record["status"] in ("ok", "outlier") and record["outputs"]["image"] is None
    assert any(w.startswith("image not shown") and "gland_ct.nii.gz" in w for w in record["warnings"])


def test_overview_slices_pass_through_the_largest_defect(tmp_path, adrenal_val_masks):
    """A ball stuck onto a real gland: the PNG's recorded slice voxel is the record's largest defect centroid."""
    mask = adrenal_val_masks[11].copy()
    centre = np.argwhere(mask).max(axis=0) + 3
    grid = np.indices(mask.shape).transpose(1, 2, 3, 0)
    mask |= np.linalg.norm(grid - centre, axis=-1) <= 4
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    path = write_volume(tmp_path / "gland.nii.gz", mask, affine)
    record = analyse_organ(str(path), None, load_bundle(ADRENAL), tmp_path / "out", "gland")
    largest = record["defects"][0]
    expected = np.round(np.linalg.solve(affine[:3, :3], np.asarray(largest["centroid_mm"]) - affine[:3, 3]))
    drawn = json.loads(Image.open(record["outputs"]["overview"]).info["Description"])["slice_voxel"]
    assert drawn == expected.astype(int).tolist()
    assert np.linalg.norm(expected - centre) < 4  # and that is where the ball was put


def test_the_page_in_a_real_browser(reviewed_run, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto((reviewed_run / "report.html").as_uri())
    rows = page.locator("#worklist tbody tr")
    assert rows.count() == 2
    # worst first (shapeqc.outputs.review_page.worklist_order): both outliers, then by what the adrenal bundle's
    # estimator measured to rank unseen kinds of error better (rank_by: the raw Dice, the first metric column)
    assert json.loads((ADRENAL / "configs" / "thresholds.json").read_text())["profiles"][0]["quality_estimator"][
        "rank_by"] == "dice"
    raw = [float(rows.nth(i).locator("td").nth(5).inner_text().split()[0]) for i in range(2)]
    assert raw == sorted(raw)
    # the interval's column and note carry the coverage the estimator measured, not a nominal one
    header = page.locator("#worklist thead th").nth(4).inner_text()
    assert header.startswith("predicted Dice [interval: covered ") and "on unseen kinds of error" in header
    assert "sorted by the raw Dice" in page.locator(".estimate-note").first.inner_text()
    first_organ = rows.nth(0).get_attribute("data-organ")
    other_organ = rows.nth(1).get_attribute("data-organ")
    # a filter hides rows
    page.select_option("#filter-organ", other_organ)
    assert rows.nth(0).is_hidden() and rows.nth(1).is_visible()
    page.select_option("#filter-organ", "")
    assert rows.nth(0).is_visible()
    # the detail view and its viewer: the canvas is drawn (the CT under the organ: many grey levels)
    rows.nth(0).locator("button.open").click()
    page.wait_for_selector("#viewer[data-loaded=true]", timeout=60_000)
    page.wait_for_timeout(500)
    shot = tmp_path / "viewer.png"
    page.locator("#viewer").screenshot(path=str(shot))
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert (pixels > 20).mean() > 0.2 and len(np.unique(pixels)) > 50
    assert page.locator("#defects tbody tr").count() >= 1
    # a verdict survives a reload
    page.check("input[name=verdict][value=reject]")
    page.fill("#note", "leaks, = not a formula")
    page.reload()
    assert rows.nth(0).locator("td.verdict").inner_text() == "reject"
    rows.nth(0).locator("button.open").click()
    assert page.is_checked("input[name=verdict][value=reject]")
    assert page.input_value("#note") == "leaks, = not a formula"
    # the export parses and says what was clicked
    with page.expect_download() as download:
        page.click("#export")
    exported = tmp_path / "reviews.csv"
    download.value.save_as(exported)
    with exported.open(newline="") as handle:
        [row] = list(csv.DictReader(handle))
    assert row == {"case": "v2_multilabel_seg", "organ": first_organ, "bundle": "adrenal_gland",
                   "verdict": "reject", "note": "leaks, = not a formula", "shapeqc_status": "outlier"}
    assert errors == []
    # the command a site runs on it: one flagged organ, rejected
    result = compare_reviews(json.loads((reviewed_run / "report.json").read_text()), read_reviews(exported))
    assert result["flag_precision"] == 1.0 and result["table"]["outlier"]["reject"] == 1
    page.close()


def test_reviews_command_on_a_hand_written_csv(tmp_path, capsys):
    records = [{"case": c, "organ": "liver", "bundle": "liver", "status": s}
               for c, s in (("a", "outlier"), ("b", "outlier"), ("c", "outlier"), ("d", "ok"), ("e", "ok"))]
    (tmp_path / "report.json").write_text(json.dumps(records))
    verdicts = (("a", "reject"), ("b", "reject"), ("c", "accept"), ("d", "reject"), ("e", "unsure"), ("z", "accept"))
    (tmp_path / "reviews.csv").write_text("case,organ,bundle,verdict,note,shapeqc_status\n" + "".join(
        f"{case},liver,liver,{verdict},,\n" for case, verdict in verdicts))
    assert cli.main(["reviews", str(tmp_path), str(tmp_path / "reviews.csv"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["flag_precision"] == pytest.approx(2 / 3)
    assert result["reject_recall"] == pytest.approx(2 / 3)
    assert result["missed_rejects"] == ["d/liver (liver)"] and result["unmatched"] == ["z/liver (liver)"]
    assert result["table"] == {"outlier": {"accept": 1, "reject": 2, "unsure": 0},
                               "ok": {"accept": 0, "reject": 1, "unsure": 1}}
    (tmp_path / "bad.csv").write_text("case,organ,bundle,verdict\na,liver,liver,maybe\n")
    with pytest.raises(SystemExit, match="bad.csv: line 2: verdict 'maybe'"):
        cli.main(["reviews", str(tmp_path), str(tmp_path / "bad.csv")])


@pytest.mark.parametrize("segmentation, image", [
    ("v2_multilabel_seg.nii.gz", "v2_ct.nii.gz"),  # the TotalSegmentator example
    ("case7.nii.gz", "case7_ct.nii.gz"),
    ("case7.nii.gz", "case7_0000.nii.gz"),  # nnU-Net naming
    ("segmentations", "ct.nii.gz"),  # TotalSegmentator -i ct.nii.gz -o segmentations
    ("liver_seg.nrrd", "liver_ct.nrrd"),
    ("oncologist/0522c0017/segmentations", "oncologist/0522c0017/CT_IMAGE.nrrd"),  # the head-and-neck tree
])
def test_the_image_beside_rule(tmp_path, segmentation, image):
    (tmp_path / image).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / image).write_bytes(b"")
    seg = tmp_path / segmentation
    seg.parent.mkdir(parents=True, exist_ok=True)
    seg.mkdir() if "." not in seg.name else seg.write_bytes(b"")
    assert image_beside(seg) == tmp_path / image
    (tmp_path / image).unlink()
    assert image_beside(seg) is None


def test_an_image_beside_a_segmentation_is_not_a_case(tmp_path, adrenal_val_masks):
    write_volume(tmp_path / "cohort" / "p1" / "seg.nii.gz", adrenal_val_masks[0], np.eye(4))
    write_volume(tmp_path / "cohort" / "p1" / "seg_ct.nii.gz", np.zeros((64, 64, 64), np.int16), np.eye(4))
    write_volume(tmp_path / "cohort" / "p2" / "seg.nii.gz", adrenal_val_masks[1], np.eye(4))
    notes: list[str] = []
    cases = discover_cases([str(tmp_path / "cohort")], notes)
    assert [case for case, _ in cases] == ["p1/seg", "p2/seg"]
    assert any("seg_ct.nii.gz: the image of" in note for note in notes)


def test_image_for_several_cases_is_refused(tmp_path, adrenal_val_masks):
    for name in ("a", "b"):
        write_volume(tmp_path / "in" / f"{name}.nii.gz", adrenal_val_masks[0], np.eye(4))
    with pytest.raises(SystemExit, match="--image names the image of one case; the inputs hold 2 cases"):
        cli.main(["analyse", str(tmp_path / "in"), "--bundle", str(ADRENAL), "--output", str(tmp_path / "out"),
                  "--image", str(tmp_path / "in" / "a.nii.gz")])
