"""report.md, report-appendix.md, the model cards weights/<model>.md, the study's figures and the
terminal screenshots, written from the study's recorded results.

    python study_report.py                # = python study.py --report-only: report, appendix, cards, README block
    python study_report.py --figures      # also redraw figures/study_*.png and figures/curves_<model>.png
    python study_report.py --screenshots  # render results/logs/*.txt to screenshots/*.png

Reads only committed files - results/ (one JSON per training run in results/cells/, LR table,
finder, logs, evaluation, ensembles), figures/*_metrics.json (written by test_model.py), the
weights' own records weights/*.json and *.pt, benchmarks/results/trials.jsonl - so a fresh clone
regenerates the same markdown byte for byte. Every number is formatted here from those files or
from the study's constants; none is typed into the prose. report.md answers the homework's
Steps 1-6 in order; everything else (every table, every run, every screenshot) is in the appendix.
Nothing imports this module: the study runs it as its last stage. The work is in report_facts.py
(the recorded study read once), report_text.py (report.md), report_cards.py (appendix, model cards,
README block; its issue-#25 section in report_recipes.py) and report_figures.py (figures, screenshots);
only this file imports those (report_cards.py imports report_recipes.py).
"""

import argparse
import sys
from pathlib import Path

from report_cards import appendix_lines, card_lines, early_stop, update_readme
from report_facts import (  # re-exported for tests/test_report.py and tests/test_study.py as study_report.X
    APPENDIX, MAX_REPORT_WORDS, NAMES, ROOT, TRIALS, Facts, compare, curves_caption, run_words, settings, test_use,
    write_text,
)
from report_figures import condense, draw_figures, figure_curves, render_screenshots
from report_text import report_lines, section_optimizers


def write_report(root: Path = ROOT) -> Path:
    """Write report.md, report-appendix.md and weights/<model>.md; returns report.md's path."""
    f = Facts(root)
    path = write_text(root / "report.md", report_lines(f))
    write_text(root / APPENDIX, appendix_lines(f))
    for m in f.shipped:
        write_text(root / "weights" / f"{m}.md", card_lines(f, m))
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write report.md, the appendix and the model cards (and optionally figures, "
                                            "screenshots) from the study's results.")
    p.add_argument("--root", default=str(ROOT), help="the study's root (default: this repository)")
    p.add_argument("--figures", action="store_true", help="also redraw figures/study_*.png and figures/curves_*.png")
    p.add_argument("--screenshots", action="store_true", help="also render results/logs/*.txt to screenshots/")
    a = p.parse_args(argv)
    root = Path(a.root).resolve()
    if a.figures:
        print("figures:", ", ".join(draw_figures(root)))
    if a.screenshots:
        print("screenshots:", ", ".join(render_screenshots(root)))
    print(f"wrote {write_report(root)}, {root / APPENDIX} and the model cards weights/*.md")
    if update_readme(root):
        print(f"updated {root / 'README.md'} (how to run each model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
