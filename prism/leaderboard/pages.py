"""HTML pages of the public leaderboard, rendered on the server from :mod:`prism.leaderboard.board` data.

Hotkeys, ids, codes and everything else in the store came from untrusted miners (or from
evaluations of their code), so every value goes through :func:`e` (``html.escape`` with quotes)
and every URL built from a value is percent-encoded first. The pages carry no script at all, and
the server's Content-Security-Policy forbids scripts anyway.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from prism.leaderboard.board import API
from prism.manifest import RunManifest

SHORT = 12

STYLESHEET = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1d232b; background: #f6f7f9; }
header { background: #18324d; color: #fff; padding: 14px 28px; }
header h1 { margin: 0; font-size: 20px; } header p { margin: 4px 0 0; color: #c6d3e1; }
header a { color: #fff; }
main { padding: 8px 28px 32px; max-width: 1280px; }
h2 { font-size: 16px; margin: 22px 0 8px; }
table { border-collapse: collapse; background: #fff; width: 100%; box-shadow: 0 1px 2px #0002; }
th, td { padding: 5px 9px; border-bottom: 1px solid #e4e7eb; text-align: left; white-space: nowrap; }
th { background: #eef1f5; font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.leader td { background: #fff8dc; } code, .mono { font-family: ui-monospace, monospace; font-size: 12.5px; }
.muted { color: #6b7580; } .tag { background: #18324d; color: #fff; border-radius: 3px; padding: 0 5px; }
a { color: #1259a5; } img.curve { max-width: 720px; width: 100%; background: #fff; }
pre { background: #fff; padding: 10px; overflow-x: auto; max-height: 480px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 3px 14px; }
dt { font-weight: 600; } .scroll { overflow-x: auto; }
"""


def e(value: Any) -> str:
    """Escape any value for HTML text and attribute values."""
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _diff(difference: float | None, stderr: float | None) -> str:
    """A paired difference (incumbent minus challenger bpb) with its standard error."""
    if difference is None:
        return "-"
    return f"{difference:+.4f}" + ("" if stderr is None else f" ± {stderr:.4f}")


def _short(value: str | None) -> str:
    if value is None:
        return "-"
    return f'<span class="mono" title="{e(value)}">{e(value[:SHORT])}</span>'


def _hotkey(value: str | None) -> str:
    """Hotkeys are 48 characters: shortened in tables, the whole value in the tooltip."""
    if value is None:
        return "-"
    text = value if len(value) <= SHORT + 4 else value[:SHORT] + "…"
    return f'<span class="mono" title="{e(value)}">{e(text)}</span>'


def _link(href: str, text: str, *, raw_text: bool = False) -> str:
    return f'<a href="{e(href)}">{text if raw_text else e(text)}</a>'


def family_href(family_id: str) -> str:
    return f"/families/{quote(family_id, safe='')}"


def run_href(run_id: str) -> str:
    return f"/runs/{quote(run_id, safe='')}"


def _table(
    table_id: str, headers: Sequence[str], rows: Iterable[tuple[Mapping[str, str], Sequence[str]]]
) -> str:
    """``rows``: (attributes of the <tr>, cells as already-escaped HTML)."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = []
    for attrs, cells in rows:
        attributes = "".join(f' {name}="{e(value)}"' for name, value in attrs.items())
        body.append(f"<tr{attributes}>" + "".join(cells) + "</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(headers)}" class="muted">none yet</td></tr>')
    return (
        f'<div class="scroll"><table id="{e(table_id)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _td(html_text: str, *, num: bool = False) -> str:
    return f'<td class="num">{html_text}</td>' if num else f"<td>{html_text}</td>"


def layout(title: str, body: str, subtitle: str = "") -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{e(title)}</title><link rel="stylesheet" href="/static/leaderboard.css"></head><body>'
        f'<header><h1><a href="/">PRISM leaderboard</a></h1><p>{e(subtitle)}</p></header>'
        f"<main>{body}</main></body></html>"
    )


# --- the leaderboard ------------------------------------------------------------------------------


def leaderboard_page(data: Mapping[str, Any]) -> str:
    weights = data["weights"]
    subtitle = (
        f"{data['submissions']['total']} submissions, runs {_counts(data['runs'])}; "
        + (f"last weights at block {weights['block']} ({weights['profile_key'] or 'unknown profile'})"
           if weights else "no weights set yet")
    )  # fmt: skip
    body = (
        "<h2>Architecture families</h2>" + families_table(data["families"])
        + "<h2>Training variants</h2>" + variants_table(data["variants"])
        + "<h2>Weights</h2>" + weights_table(data["weight_history"])
        + f'<p class="muted">JSON: {_link(API + "/leaderboard", API + "/leaderboard")}, '
        + f'{_link(API + "/weights", "weights history")}, {_link(API + "/runs", "runs")}</p>'
    )  # fmt: skip
    return layout("PRISM leaderboard", body, subtitle)


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "none"


def families_table(families: Sequence[Mapping[str, Any]]) -> str:
    headers = ("#", "family", "owner", "canonical version", "held-out bpb", "lead Δ ± s.e.", "compute ratio",
               "probe bpb", "runs", "founded", "code")  # fmt: skip
    rows = []
    for f in families:
        code = f["code"]
        download = _link(code["url"], "zip") if code else '<span class="muted">-</span>'
        leader = ' <span class="tag">lead</span>' if f["leader"] else ""
        cells = [
            _td(e(f["rank"]), num=True), _td(_link(family_href(f["family_id"]), e(f["family_id"]), raw_text=True)
                                             + leader),
            _td(_hotkey(f["owner_hotkey"])), _td(_short(f["canonical_version_id"])),
            _td(_num(f["heldout_bpb"]), num=True), _td(_diff(f["lead_difference_bpb"], f["lead_stderr_bpb"]), num=True),
            _td(_num(f["compute_ratio"], 2), num=True), _td(_num(f["probe_bpb"]), num=True),
            _td(e(f["runs"]), num=True), _td(e(f["founded_block"]), num=True), _td(download),
        ]  # fmt: skip
        attrs = {"data-family-id": f["family_id"], "data-owner": f["owner_hotkey"],
                 "class": "leader" if f["leader"] else "family"}  # fmt: skip
        rows.append((attrs, cells))
    return _table("families", headers, rows)


def variants_table(variants: Sequence[Mapping[str, Any]]) -> str:
    headers = ("family", "hotkey", "version", "baseline bpb", "variant bpb", "improvement", "± s.e.",
               "margin", "qualifies", "best", "block")  # fmt: skip
    rows = []
    for v in variants:
        cells = [
            _td(_link(family_href(v["family_id"]), e(v["family_id"]), raw_text=True)),
            _td(_hotkey(v["hotkey"])), _td(_short(v["version_id"])),
            _td(_num(v["baseline_bpb"]), num=True), _td(_num(v["variant_bpb"]), num=True),
            _td(_num(v["improvement_bpb"]), num=True), _td(_num(v["stderr_bpb"]), num=True),
            _td(_num(v["margin_bpb"]), num=True), _td("pending" if v["pending"] else ("yes" if v["qualifies"] else "no")),
            _td('<span class="tag">best</span>' if v["best"] else ""), _td(e(v["commit_block"]), num=True),
        ]  # fmt: skip
        rows.append(({"data-family-id": v["family_id"], "data-hotkey": v["hotkey"]}, cells))
    return _table("variants", headers, rows)


def weights_table(history: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for ws in history:
        shares = "; ".join(
            f"uid {e(w['uid'])} {_hotkey(w['hotkey'])} {w['weight']:.4f}" for w in ws["weights"]
        )
        cells = [_td(e(ws["block"]), num=True), _td(e(ws["profile_key"] or "-")), _td(shares or "-")]
        rows.append(({"data-block": str(ws["block"])}, cells))
    return _table("weights", ("block", "profile", "weights (uid, hotkey, weight)"), rows)


# --- one family -----------------------------------------------------------------------------------


def family_page(data: Mapping[str, Any], origin: str) -> str:
    f = data["family"]
    code = f["code"]
    fetch = (
        f"<p>Canonical code: {_link(code['url'], 'download the ZIP')} "
        f'(<span class="mono">sha256 {e(code["sha256"])}</span>, {e(code["bytes"])} bytes), or start a '
        f"training variant with<br><code>prism fetch-family {e(f['family_id'])} --from {e(origin)}</code></p>"
        if code
        else '<p class="muted">The canonical code is not available from this validator.</p>'
    )
    facts = {
        "owner": f["owner_hotkey"], "canonical version": f["canonical_version_id"],
        "held-out bpb": _num(f["heldout_bpb"]),
        "lead: paired difference ± s.e.": _diff(f["lead_difference_bpb"], f["lead_stderr_bpb"]),
        "canonical: paired difference ± s.e.": _diff(f["canonical_difference_bpb"], f["canonical_stderr_bpb"]),
        "canonical version held by": f["canonical_hotkey"] or f["owner_hotkey"],
        "compute ratio": _num(f["compute_ratio"], 2), "probe bpb": _num(f["probe_bpb"]),
        "founded at block": f["founded_block"], "leader": "yes" if f["leader"] else "no",
    }  # fmt: skip
    details = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts.items())
    body = (
        f"<h2>Family <span class=\"mono\">{e(f['family_id'])}</span></h2><dl>{details}</dl>{fetch}"
        + "<h2>Versions</h2>" + versions_table(data["versions"])
        + "<h2>Training variants</h2>" + variants_table(data["variants"])
        + "<h2>Runs</h2>" + runs_table(data["runs"])
    )  # fmt: skip
    return layout(f"PRISM family {f['family_id']}", body, f"family {f['family_id']}")


def versions_table(versions: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for v in versions:
        cells = [
            _td(_short(v["version_id"])), _td(_hotkey(v["hotkey"])),
            _td(_short(v["zip_sha256"])), _td(e(v["commit_block"]), num=True),
            _td(_num(v["heldout_bpb"]), num=True), _td(_num(v["probe_bpb"]), num=True),
            _td('<span class="tag">canonical</span>' if v["canonical"] else ""),
        ]  # fmt: skip
        rows.append(({"data-version-id": v["version_id"]}, cells))
    return _table("versions", ("version", "hotkey", "zip", "block", "held-out bpb", "probe bpb", ""), rows)


def runs_table(runs: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for r in runs:
        cells = [
            _td(_link(run_href(r["run_id"]), e(r["run_id"]), raw_text=True)), _td(_short(r["zip_sha256"])),
            _td(e(r["recipe_mode"])), _td(e(r["regime"])), _td(e(r["seed"]), num=True),
            _td(e(r["state"]) + (f' <span class="mono">{e(r["failure_code"])}</span>' if r["failure_code"] else "")),
            _td(_num(r["heldout_bpb"]), num=True), _td(_num(r["probe_bpb"]), num=True),
        ]  # fmt: skip
        rows.append(({"data-run-id": r["run_id"]}, cells))
    return _table(
        "runs", ("run", "zip", "recipe", "regime", "seed", "state", "held-out bpb", "probe bpb"), rows
    )


# --- one run --------------------------------------------------------------------------------------


def run_page(summary: Mapping[str, Any], manifest: RunManifest) -> str:
    run_id = summary["run_id"]
    facts = {
        "family": summary["family_id"], "version": summary["version_id"], "zip sha256": summary["zip_sha256"],
        "kind": summary["kind"], "recipe": summary["recipe_mode"], "regime": summary["regime"],
        "seed": summary["seed"], "profile": summary["profile_key"], "state": summary["state"],
        "failure": summary["failure_code"] or "-", "held-out bpb": _num(summary["heldout_bpb"]),
        "probe bpb": _num(summary["probe_bpb"]), "score eligible": "yes" if summary["score_eligible"] else "no",
        "reasons": ", ".join(summary["reasons"]) or "-", "train tokens": manifest.metrics.train_tokens,
        "parameters": manifest.metrics.parameter_count, "layers": manifest.metrics.layer_count,
    }  # fmt: skip
    details = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts.items())
    plots = (
        "".join(
            f'<img class="curve" alt="loss curve ({e(name)})" src="{e(_plot_href(run_id, name))}">'
            for name in summary["plots"]
        )
        or '<p class="muted">No loss curve was drawn for this run.</p>'
    )
    family = summary["family_id"]
    back = _link(family_href(family), f"family {family}") if family else ""
    manifest_json = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True)
    body = (
        f'<h2>Run <span class="mono">{e(run_id)}</span> {back}</h2><dl>{details}</dl>'
        f"<h2>Loss curve</h2>{plots}"
        f"<h2>Manifest</h2><p>{_link(summary['manifest_url'], 'prism_run_manifest.v1.json')}</p>"
        f"<pre>{e(manifest_json)}</pre>"
    )
    return layout(f"PRISM run {run_id}", body, f"run {run_id}")


def _plot_href(run_id: str, name: str) -> str:
    return f"{API}/runs/{quote(run_id, safe='')}/plots/{quote(name, safe='')}"
