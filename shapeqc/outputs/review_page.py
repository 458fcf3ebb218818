"""report.html: the review page, a worklist a reviewer works through in the browser, offline and with no server.

Everything on the page comes from the run's records (report.json's content, embedded). It opens on one table of
all judged organs, outliers first and then the lowest predicted Dice first where the bundle's estimate ranked
held-out organs better than the raw Dice did, else the lowest raw Dice (:func:`shapeqc.scoring.quality.rank_value`); the
predicted Dice's interval is labelled with the coverage its bundle measured on unseen kinds of error, never a
nominal one (issue 35). Filters by organ, status and bundle and each score beside its threshold. A row opens the
organ's detail: the large overview, the defects (kind, ml, position in scanner mm), links to the NIfTI and STL
files, and an interactive viewer (NiiVue, vendored: :mod:`shapeqc.outputs.viewer`) of the image with segmentation,
reconstruction and difference. The reviewer's verdict per organ (accept / reject / unsure and a note) is kept in
the browser (localStorage, per report) and exported as ``reviews.csv`` (case, organ, bundle, verdict, note,
shapeqc_status), which ``shapeqc reviews OUT/ reviews.csv`` compares with the flags.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from shapeqc.outputs.records import strict
from shapeqc.scoring.quality import RANK_KEYS, coverage_text, rank_value
from shapeqc.scoring.thresholds import METRICS

JUDGED = ("ok", "outlier")
REVIEW_COLUMNS = ("case", "organ", "bundle", "verdict", "note", "shapeqc_status")


def worklist_order(records: list[dict]) -> list[dict]:
    """Judged records, worst first: outliers, then the lowest :func:`shapeqc.scoring.quality.rank_value`."""
    def key(record: dict):
        return (record["status"] != "outlier", rank_value(record), record["case"], record["organ"] or "")

    return sorted([r for r in records if r["status"] in JUDGED], key=key)


def estimate_notes(records: list[dict]) -> list[str]:
    """One sentence per bundle with a quality estimate in ``records``: what its interval was measured to hold and
    what its worklist rows are sorted by (from the records' ``quality``, as the bundle's estimator stored it)."""
    by_bundle: dict[str, dict] = {}
    for record in records:
        if (record.get("quality") or {}).get("predicted_dice") is not None:
            by_bundle.setdefault(record["bundle"], record["quality"])
    notes = []
    for bundle, quality in sorted(by_bundle.items()):
        ranked = quality.get("rank_by", "predicted_dice")
        why = ("" if ranked == "predicted_dice" or quality.get("coverage") is None
               else " (its predicted Dice ranked held-out organs worse than the raw Dice did)")
        notes.append(f"{bundle}: predicted Dice interval {coverage_text(quality)}; sorted by {RANK_KEYS[ranked]}"
                     f"{why}.")
    return notes


def interval_header(records: list[dict]) -> str:
    """The worklist's column title, from the coverage the records' estimators measured: one figure when they
    share it, else a pointer to the notes above the table."""
    texts = {coverage_text(r["quality"]) for r in records if (r.get("quality") or {}).get("predicted_dice") is not None}
    if len(texts) == 1:
        return f"predicted Dice [interval: {texts.pop()}]"
    return "predicted Dice [interval, coverage per bundle above]" if texts else "predicted Dice"


def _relative(path: str | None, out_dir: Path) -> str | None:
    return os.path.relpath(path, out_dir) if path else None


def _page_record(record: dict, out_dir: Path) -> dict:
    """What the page's script needs of a record: output paths relative to the page, thresholds flattened."""
    record = strict(record)
    rules = (record.get("thresholds") or {}).get("metrics") or {}
    thresholds = {m: rule.get("threshold") for m, rule in rules.items() if rule.get("enabled", m == "dice")}
    return {"case": record["case"], "organ": record["organ"] or "", "bundle": record["bundle"],
            "status": record["status"], "reason": record.get("reason"), "scores": record.get("scores"),
            "thresholds": thresholds, "quality": record.get("quality"), "defects": record.get("defects", []),
            "interval_note": coverage_text(record.get("quality")),
            "warnings": record.get("warnings", []),
            "outputs": {k: _relative(v, out_dir) for k, v in (record.get("outputs") or {}).items()
                        if k != "image" and v}}


def _score_cell(record: dict, metric: str) -> str:
    value = (record.get("scores") or {}).get(metric)
    if value is None:
        return ""
    rule = ((record.get("thresholds") or {}).get("metrics") or {}).get(metric) or {}
    if rule.get("enabled", metric == "dice") and rule.get("threshold") is not None:
        sign = "&lt;" if rule.get("worse_when", "below") == "below" else "&gt;"
        return f"{value:.3f} <small>(outlier {sign} {rule['threshold']:.3f})</small>"
    return f"{value:.3f}"


def _worklist_row(index: int, record: dict) -> str:
    quality = record.get("quality") or {}
    predicted = ""
    if quality.get("predicted_dice") is not None:
        low, high = quality["interval"]
        predicted = f"{quality['predicted_dice']:.3f} <small>[{low:.3f}, {high:.3f}]</small>"
    cells = [html.escape(record["case"]), html.escape(record["organ"] or ""), html.escape(record["bundle"]),
             html.escape(record["status"]), predicted, *(_score_cell(record, m) for m in METRICS)]
    row = "".join(f"<td>{c}</td>" for c in cells)
    return (f'<tr data-index="{index}" data-status="{html.escape(record["status"])}" '
            f'data-organ="{html.escape(record["organ"] or "")}" data-bundle="{html.escape(record["bundle"])}" '
            f'class="{html.escape(record["status"])}">{row}<td class="verdict"></td>'
            f'<td><button class="open">open</button></td></tr>')


def _status_counts(records: list[dict]) -> dict[str, int]:
    return {status: sum(r["status"] == status for r in records) for status in ("ok", "outlier", "not_judged", "error")}


def _options(values) -> str:
    return '<option value="">all</option>' + "".join(
        f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in sorted(set(values)))


def review_html(records: list[dict], out_dir: str | os.PathLike) -> str:
    """The page for ``records`` written into ``out_dir`` (paths in it are relative to that folder)."""
    out_dir = Path(out_dir)
    worklist = worklist_order(records)
    others = [r for r in records if r["status"] not in JUDGED]
    counts = _status_counts(records)
    cases = {r["case"] for r in records}
    summary = (f"{len(cases)} cases, {len(records)} organs: {counts['ok']} ok, {counts['outlier']} outliers, "
               f"{counts['not_judged']} not judged, {counts['error']} errors")
    by_organ: dict[str, list[dict]] = {}
    for record in records:
        by_organ.setdefault(f"{record['organ'] or ''} ({record['bundle']})", []).append(record)
    organ_rows = "".join(
        f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{n}</td>" for n in _status_counts(group).values())
        + "</tr>" for name, group in sorted(by_organ.items()))
    metric_heads = "".join(f"<th>{html.escape(m)}</th>" for m in METRICS)
    other_rows = "".join(
        f"<tr><td>{html.escape(r['case'])}</td><td>{html.escape(r['organ'] or '')}</td><td>{html.escape(r['bundle'])}"
        f"</td><td>{html.escape(r['status'])}</td><td>{html.escape(r.get('reason') or '')}</td></tr>" for r in others)
    data = json.dumps([_page_record(r, out_dir) for r in worklist], allow_nan=False).replace("</", "<\\/")
    notes = "".join(f'<p class="estimate-note">{html.escape(n)}</p>\n' for n in estimate_notes(worklist))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>shapeqc review</title><style>{STYLE}</style></head><body>
<h1>shapeqc review</h1>
<p id="summary">{html.escape(summary)}</p>
<p class="help">Worklist: every judged organ, outliers first, then the lowest predicted Dice (the raw Dice where the
bundle has no quality estimate, or where its estimate ranked held-out organs worse). Open a row to see the organ,
the image under it and its defects, and give your verdict; verdicts stay in this browser and
<b>Export reviews.csv</b> saves them (<code>shapeqc reviews OUT/ reviews.csv</code> compares them with the flags).</p>
{notes}<div id="filters">organ <select id="filter-organ">{_options(r["organ"] or "" for r in worklist)}</select>
status <select id="filter-status">{_options(r["status"] for r in worklist)}</select>
bundle <select id="filter-bundle">{_options(r["bundle"] for r in worklist)}</select>
<button id="export">Export reviews.csv</button> <span id="reviewed"></span></div>
<table id="worklist"><thead><tr><th>case</th><th>organ</th><th>bundle</th><th>status</th>
<th>{html.escape(interval_header(worklist))}</th>{metric_heads}<th>verdict</th><th></th></tr></thead>
<tbody>{"".join(_worklist_row(i, r) for i, r in enumerate(worklist))}</tbody></table>
<section id="detail" hidden>
<h2 id="detail-title"></h2>
<p id="detail-status"></p>
<div id="verdict-box">verdict:
<label><input type="radio" name="verdict" value="accept"> accept</label>
<label><input type="radio" name="verdict" value="reject"> reject</label>
<label><input type="radio" name="verdict" value="unsure"> unsure</label>
<input id="note" type="text" size="60" placeholder="note"></div>
<div id="detail-body"><div><a id="overview-link" target="_blank"><img id="overview" alt="overview"></a>
<p class="help">Viewer: image (grey), segmentation (green), reconstruction (red outline colours), disagreement
(warm); drag to move through the slices.</p>
<div id="viewer-box"><canvas id="viewer"></canvas></div><p id="viewer-status"></p></div>
<div><h3>Defects</h3><table id="defects"><thead><tr><th>kind</th><th>ml</th><th>centroid (scanner mm)</th></tr>
</thead><tbody></tbody></table><h3>Files</h3><ul id="files"></ul><ul id="warnings"></ul></div></div>
<p><button id="close">back to the worklist</button></p>
</section>
<h2>Not judged and errors</h2>
<table id="others"><thead><tr><th>case</th><th>organ</th><th>bundle</th><th>status</th><th>reason</th></tr></thead>
<tbody>{other_rows}</tbody></table>
<h2>By organ</h2><table class="organs"><thead><tr><th>organ (bundle)</th><th>ok</th><th>outlier</th>
<th>not judged</th><th>error</th></tr></thead><tbody>{organ_rows}</tbody></table>
<script src="niivue.umd.js"></script>
<script id="records" type="application/json">{data}</script>
<script>{SCRIPT}</script>
</body></html>
"""


STYLE = """body{font-family:sans-serif;margin:1em 2em}table{border-collapse:collapse;margin-bottom:1em}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#eee}small{color:#555}
tr.outlier{background:#fde2e2}tr.ok{background:#fff}tr.not_judged{background:#fff6d5}tr.error{background:#eee}
.help{color:#444;max-width:70em}#filters{margin:0.5em 0 1em}#detail{border-top:2px solid #888;padding-top:0.5em}
#detail-body{display:flex;gap:2em;flex-wrap:wrap}#overview{max-width:1000px;width:100%}
#viewer-box{width:900px;height:420px;background:#000}td.verdict{font-weight:bold}"""

SCRIPT = r"""
const records = JSON.parse(document.getElementById('records').textContent);
const storeKey = 'shapeqc-reviews:' + location.pathname;
function loadReviews() { try { return JSON.parse(localStorage.getItem(storeKey)) || {}; } catch (e) { return {}; } }
function saveReviews(reviews) { localStorage.setItem(storeKey, JSON.stringify(reviews)); }
function keyOf(r) { return r.case + '|' + r.organ + '|' + r.bundle; }
const rows = [...document.querySelectorAll('#worklist tbody tr')];
function showVerdicts() {
  const reviews = loadReviews();
  let count = 0;
  rows.forEach(row => {
    const review = reviews[keyOf(records[+row.dataset.index])];
    row.querySelector('td.verdict').textContent = review ? review.verdict : '';
    if (review) count += 1;
  });
  document.getElementById('reviewed').textContent = count + ' of ' + rows.length + ' reviewed';
}
function applyFilters() {
  const wanted = {organ: document.getElementById('filter-organ').value,
                  status: document.getElementById('filter-status').value,
                  bundle: document.getElementById('filter-bundle').value};
  rows.forEach(row => {
    const shown = Object.entries(wanted).every(([k, v]) => !v || row.dataset[k] === v);
    row.style.display = shown ? '' : 'none';
  });
}
['organ', 'status', 'bundle'].forEach(k =>
  document.getElementById('filter-' + k).addEventListener('change', applyFilters));
let current = null;
let viewer = null;
function fileItem(label, path) {
  if (!path) return '';
  return '<li><a href="' + encodeURI(path) + '">' + label + '</a></li>';
}
function escapeText(text) { const d = document.createElement('div'); d.textContent = text; return d.innerHTML; }
function openDetail(index) {
  current = records[index];
  const r = current;
  document.getElementById('detail').hidden = false;
  document.getElementById('detail-title').textContent = r.case + ' / ' + r.organ + ' (' + r.bundle + ')';
  const q = r.quality && r.quality.predicted_dice != null ?
    ', predicted Dice ' + r.quality.predicted_dice.toFixed(3) + ' [' + r.quality.interval[0].toFixed(3) + ', ' +
    r.quality.interval[1].toFixed(3) + '] (interval ' + r.interval_note + ')' : '';
  document.getElementById('detail-status').textContent = r.status + (r.reason ? ': ' + r.reason : '') + q;
  const overview = document.getElementById('overview');
  overview.src = r.outputs.overview || '';
  document.getElementById('overview-link').href = r.outputs.overview || '#';
  document.querySelector('#defects tbody').innerHTML = (r.defects || []).map(d =>
    '<tr><td>' + d.kind + '</td><td>' + d.volume_ml.toFixed(3) + '</td><td>' +
    d.centroid_mm.map(c => c.toFixed(1)).join(', ') + '</td></tr>').join('');
  document.getElementById('files').innerHTML = fileItem('reconstruction.nii.gz', r.outputs.reconstruction) +
    fileItem('difference.nii.gz', r.outputs.difference) + fileItem('reconstruction.stl (3D Slicer)', r.outputs.stl) +
    fileItem('overview.png', r.outputs.overview);
  document.getElementById('warnings').innerHTML =
    (r.warnings || []).map(w => '<li>' + escapeText(w) + '</li>').join('');
  const review = loadReviews()[keyOf(r)] || {};
  document.querySelectorAll('input[name=verdict]').forEach(i => { i.checked = i.value === review.verdict; });
  document.getElementById('note').value = review.note || '';
  loadViewer(r);
  document.getElementById('detail').scrollIntoView();
}
function recordVerdict() {
  if (!current) return;
  const chosen = document.querySelector('input[name=verdict]:checked');
  const reviews = loadReviews();
  if (chosen) {
    reviews[keyOf(current)] = {case: current.case, organ: current.organ, bundle: current.bundle,
                               verdict: chosen.value, note: document.getElementById('note').value,
                               shapeqc_status: current.status};
  }
  saveReviews(reviews);
  showVerdicts();
}
document.querySelectorAll('input[name=verdict]').forEach(i => i.addEventListener('change', recordVerdict));
document.getElementById('note').addEventListener('input', recordVerdict);
rows.forEach(row => row.querySelector('button.open').addEventListener('click', () => openDetail(+row.dataset.index)));
document.getElementById('close').addEventListener('click', () => {
  document.getElementById('detail').hidden = true; document.getElementById('worklist').scrollIntoView(); });
function csvCell(value) {
  let text = String(value == null ? '' : value);
  if (/^[=+\-@\t\r]/.test(text)) text = "'" + text;
  return /[",\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
}
function reviewsCsv() {
  const header = ['case', 'organ', 'bundle', 'verdict', 'note', 'shapeqc_status'];
  const lines = [header.join(',')];
  Object.values(loadReviews()).forEach(v => lines.push(header.map(h => csvCell(v[h])).join(',')));
  return lines.join('\n') + '\n';
}
document.getElementById('export').addEventListener('click', () => {
  const link = document.createElement('a');
  link.href = URL.createObjectURL(new Blob([reviewsCsv()], {type: 'text/csv'}));
  link.download = 'reviews.csv';
  document.body.appendChild(link);
  link.click();
  link.remove();
});
function loadViewer(r) {
  const status = document.getElementById('viewer-status');
  const key = r.case + '/' + r.organ + '/' + r.bundle;
  if (!r.outputs.viewer || typeof niivue === 'undefined') {
    status.textContent = 'no viewer data for this organ';
    return;
  }
  status.textContent = 'loading the viewer...';
  const show = async () => {
    const data = (window.shapeqcViewer || {})[key];
    if (!data) { status.textContent = 'viewer data missing: ' + r.outputs.viewer; return; }
    if (!viewer) {
      viewer = new niivue.Niivue({backColor: [0, 0, 0, 1], crosshairWidth: 0.5});
      await viewer.attachToCanvas(document.getElementById('viewer'));
    }
    viewer.volumes.slice().forEach(v => viewer.removeVolume(v));
    const layers = [];
    if (data.image) layers.push({base64: data.image, name: 'image.nii.gz', colormap: 'gray', opacity: 1,
                                 cal_min: data.window ? data.window[0] : undefined,
                                 cal_max: data.window ? data.window[1] : undefined});
    layers.push({base64: data.segmentation, name: 'segmentation.nii.gz', colormap: data.image ? 'green' : 'gray',
                 opacity: data.image ? 0.35 : 1, cal_min: 0, cal_max: 1});
    layers.push({base64: data.reconstruction, name: 'reconstruction.nii.gz', colormap: 'red', opacity: 0.3,
                 cal_min: 0, cal_max: 1});
    layers.push({base64: data.difference, name: 'difference.nii.gz', colormap: 'warm', opacity: 0.7,
                 cal_min: 0.5, cal_max: 2});
    for (const layer of layers) viewer.addVolume(await niivue.NVImage.loadFromBase64(layer));
    viewer.setSliceType(viewer.sliceTypeMultiplanar);
    viewer.drawScene();
    status.textContent = 'viewer: ' + layers.length + ' volumes';
    document.getElementById('viewer').dataset.loaded = 'true';
  };
  if ((window.shapeqcViewer || {})[key]) { show(); return; }
  const script = document.createElement('script');
  script.src = r.outputs.viewer;
  script.onload = show;
  script.onerror = () => { status.textContent = 'cannot load ' + r.outputs.viewer; };
  document.body.appendChild(script);
}
showVerdicts();
"""
