"""The leaderboard page in a real headless Chromium, served by a real `prism serve`.

The slow test reads the store of a real `prism localnet` run (three example miners, a validator
that trained, scored and set weights), checks the families the page shows against what
`prism leaderboard --json` reads from the same store, and takes the screenshot in the docs
(set PRISM_LEADERBOARD_SCREENSHOT_DIR=docs/img to refresh it). The same localnet store then
serves a training miner's path, offline: fetch the family from the validator's leaderboard and
train the starter in the sandbox on that family (in this module so that one localnet run, a
module fixture, serves both).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from leaderboard_helpers import HOSTILE_HOTKEY, REPO, TINY_PROFILE

from prism.evaluator.host import evaluate
from prism.profiles import load_profile

ROWS_JS = """[...document.querySelectorAll('#%s tbody tr')].filter(r => !r.querySelector('td[colspan]'))
  .map(r => ({data: {...r.dataset}, cells: [...r.cells].map(c => c.textContent.trim())}))"""


def _rows(browser: Any, table: str) -> list[dict[str, Any]]:
    return browser.js(ROWS_JS % table)


def _dialogs(browser: Any) -> list[dict[str, Any]]:
    return [e for e in browser.events if e.get("method") == "Page.javascriptDialogOpening"]


def test_the_page_renders_what_miners_control_as_text(scored_store, serve, browser) -> None:
    url = serve(scored_store["state"]).url
    browser.open(url + "/")
    families = _rows(browser, "families")
    assert [row["data"]["familyId"] for row in families] == [
        scored_store["families"][name] for name in ("mixer", "gpt", "gone")
    ]
    # shown literally: as text (shortened in the table) and whole in attributes
    assert families[1]["data"]["owner"] == HOSTILE_HOTKEY
    assert families[1]["cells"][2] == HOSTILE_HOTKEY[:12] + "…"
    owner_title = "document.querySelectorAll('#families tbody tr')[1].cells[2].querySelector('span').title"
    assert browser.js(owner_title) == HOSTILE_HOTKEY
    assert browser.js("document.scripts.length") == 0
    assert browser.js("document.querySelectorAll('[onerror], img:not(.curve)').length") == 0
    assert _dialogs(browser) == []
    # the stylesheet loaded (the CSP allows 'self' styles)
    assert (
        browser.js("getComputedStyle(document.querySelector('header')).backgroundColor") == "rgb(24, 50, 77)"
    )
    assert families[2]["cells"][-1] == "-"  # the family whose ZIP is gone has no download link
    browser.open(url + "/families/" + scored_store["families"]["gpt"])
    assert browser.js("document.querySelector('h2').textContent").endswith(scored_store["families"]["gpt"])
    assert _dialogs(browser) == []


@pytest.mark.slow
def test_leaderboard_page_of_a_localnet_validator(
    localnet_root: Path, serve, browser, tmp_path: Path
) -> None:
    state = localnet_root / "validator"
    cli = subprocess.run([sys.executable, "-m", "prism.cli", "leaderboard", "--db", str(state), "--json"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    stored = json.loads(cli.stdout)
    url = serve(state).url
    browser.open(url + "/")

    families = _rows(browser, "families")
    assert [row["data"]["familyId"] for row in families] == [f["family_id"] for f in stored["families"]]
    assert len(families) == 2  # examples/gpt and examples/mixer are two families
    gpt_family = yaml.safe_load((REPO / "examples/gpt_recipe/prism.yaml").read_text())["architecture_id"]
    assert gpt_family in {row["data"]["familyId"] for row in families}
    for row, family in zip(families, stored["families"], strict=True):
        cells = row["cells"]
        assert (
            row["data"]["owner"] == family["owner_hotkey"] and cells[2] == family["owner_hotkey"][:12] + "…"
        )
        assert cells[4] == f"{family['heldout_bpb']:.4f}" and cells[7] == f"{family['probe_bpb']:.4f}"
        lead, se = family["lead_difference_bpb"], family["lead_stderr_bpb"]  # the stored lead contest
        assert cells[5] == ("-" if lead is None else f"{lead:+.4f}" + ("" if se is None else f" ± {se:.4f}"))
        assert ("lead" in cells[1]) == bool(family["leader"]) and cells[-1] == "zip"
    variants = _rows(browser, "variants")
    best = [v for v in stored["variants"] if v["best"]]
    assert [(r["data"]["hotkey"], "best" in r["cells"][9]) for r in variants] == [
        (v["hotkey"], bool(v["best"])) for v in stored["variants"]
    ] and best
    weights = _rows(browser, "weights")
    assert weights[0]["data"]["block"] == str(stored["weights"]["block"])
    assert _dialogs(browser) == [] and browser.js("document.scripts.length") == 0
    shot = browser.screenshot(tmp_path / "leaderboard.png")

    # the family page links its canonical code, and a run page shows its loss curve
    browser.open(f"{url}/families/{gpt_family}")
    href = browser.js("document.querySelector('a[href$=\"/code.zip\"]').getAttribute('href')")
    assert href == f"/api/v1/families/{gpt_family}/code.zip"
    assert f"prism fetch-family {gpt_family} --from {url}" in browser.js("document.body.textContent")
    family_shot = browser.screenshot(tmp_path / "leaderboard-family.png")
    run_id = _rows(browser, "runs")[0]["data"]["runId"]
    browser.open(f"{url}/runs/{run_id}")
    curve = "document.querySelector('img.curve')"
    assert browser.js(f"{curve}.complete && {curve}.naturalWidth > 100"), "the loss curve did not load"
    assert _dialogs(browser) == []

    for path in (shot, family_shot):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    target = os.environ.get("PRISM_LEADERBOARD_SCREENSHOT_DIR")
    if target:
        for path in (shot, family_shot):
            shutil.copy(path, Path(target) / path.name)


@pytest.mark.slow
def test_fetched_starter_trains_on_the_family_it_targets(localnet_root: Path, serve, tmp_path: Path) -> None:
    gpt_family = yaml.safe_load((REPO / "examples/gpt_recipe/prism.yaml").read_text())["architecture_id"]
    url = serve(localnet_root / "validator").url
    project = tmp_path / "variant"
    out = subprocess.run([sys.executable, "-m", "prism.cli", "fetch-family", gpt_family, "--from", url,
                          "--out", str(project), "--json"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["check"]["ok"]

    (manifest,) = evaluate(project, profile=load_profile(str(TINY_PROFILE)), out_dir=tmp_path / "runs",
                           data_dir=localnet_root / "data" / "offline-byte", recipe_mode="submitted",
                           progress=False)  # fmt: skip
    assert manifest.status.state == "succeeded", manifest.status
    # the model the starter builds is the family's, and the stub hook ran the training
    assert manifest.submission.kind == "training_for_arch"
    assert manifest.submission.family_id == manifest.submission.target_architecture_id == gpt_family
    hook = manifest.hooks["configure_optimizer"]
    assert hook.used and hook.source_file == "src/train_variant.py"
    assert manifest.metrics.heldout_bpb is not None and manifest.metrics.train_steps > 1
