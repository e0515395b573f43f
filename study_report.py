"""report.md, report-appendix.md, the model cards weights/<model>.md and README's generated blocks,
rendered from the Markdown templates in templates/ with the facts report_facts.py reads from the
recorded results. Python computes the facts and tables; every sentence is in a template.

    python study_report.py                # = python study.py --report-only
    python study_report.py --figures      # also redraw the report's figures from recorded data
    python study_report.py --screenshots  # render results/logs/*.txt to screenshots/*.png

Nothing imports this module: study.py runs it by path as its last stage.
"""

import argparse
import re
import sys
from pathlib import Path

import jinja2

from report_facts import NAMES, OPT_NAMES, ROOT, Study, clean_command, compare, read_json
from report_figures import DIGIT, draw_figures, render_screenshots

TEMPLATES = Path(__file__).resolve().parent / "templates"
APPENDIX = "report-appendix.md"
BLOCKS = {  # README's generated blocks: marker name -> template
    "study:models": "readme_models.md.j2",
    "calibration:convnet": "readme_calibration.md.j2",
}


def pct(x, digits: int = 2) -> str:
    """A fraction as a percentage without the sign: 0.99683 -> '99.68'."""
    return f"{100 * x:.{digits}f}"


def spread(x: dict, digits: int = 2) -> str:
    """report_facts.mean_std as percent: '99.69 ± 0.01', or the one value."""
    return pct(x["mean"], digits) + (f" ± {pct(x['std'], digits)}" if x["n"] > 1 else "")


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(pct=pct, spread=spread, num=lambda n: f"{n:,}", g=lambda x: f"{x:g}", sci=lambda x: f"{x:.1e}",
                       fixed=lambda x, d=1: f"{x:.{d}f}", command=clean_command,
                       name=lambda key: {**NAMES, **OPT_NAMES}.get(key, key))
    env.globals.update(names=NAMES, opt_names=OPT_NAMES)
    return env


def context(s: Study) -> dict:
    """Everything the templates print, computed once."""
    lr, accuracy = s.lr_table(), s.accuracy_table()
    best_lrs = lambda opt: sorted({c["lr"] for r in lr if r["optimizer"] == opt for c in r["grid"] if c["acc"] == r["best"]})  # noqa: E731
    optimizers, best = s.optimizer_table(), s.best_model()
    rest = [m for m in s.models if m not in optimizers]
    return {"s": s, "data": s.data, "design": s.design, "accuracy": accuracy, "optimizers": optimizers,
            "sweep_only": {"models": rest, "optimizers": sorted({s.cards[m]["train_config"]["optimizer"] for m in rest})},
            "spread_max": s.seed_spread(), "lr": lr, "best_lrs": best_lrs,
            "best": best, "test_cmp": compare({r["model"]: r["test"] for r in best["rows"]}, s.one_test, s.tie_k) if best else {},
            "reg": {v["variant"]: v for v in s.regularization()}, "use": s.test_use(),
            "after": s.after_test(), "curves": {m: s.curve_source(m) for m in s.shipped}, "metrics": s.metrics,
            "cards": s.cards, "recipes": s.recipes, "machine": s.final_machine(),
            "exists": lambda p: (s.root / p).exists(), "digit": DIGIT,
            "screenshots": screenshots(s), "target": smoothing(s),
            "arch": {r["model"]: r for r in accuracy}, "files": {m: s.shipped_file(m) for m in s.shipped},
            "smooth_cmp": smoothing_ablation(s), "edges": edge_directions(s, best["best"]) if best else None}


def edge_directions(s: Study, m: str) -> dict | None:
    """{"n", "of", "dirs": the counts by direction} of weights/<m>.pt's one-direction first-layer filters, from its log."""
    log = s.root / "results" / "logs" / "feature_visualization.txt"
    hit = re.search(rf"weights/{m}\.pt: .*\n +first-layer filters: (\d+) of (\d+) have one edge direction[^:]*: ([^;]+);",
                    log.read_text() if log.exists() else "")
    return {"n": int(hit[1]), "of": int(hit[2]), "dirs": hit[3]} if hit else None


def screenshots(s: Study) -> list[dict]:
    """screenshots/index.json's commands; a log that continues a run (`--resume`) shows the run's own command, resumed: True."""
    runs, shots = {r.get("log"): r["command"] for r in s.runs.values() if "command" in r}, read_json(s.root / "screenshots" / "index.json") or []
    return [dict(x, command=runs[x["log"]], resumed=True) if "--resume" in x["command"].split() and x.get("log") in runs
            else x for x in shots if "command" in x]


def smoothing_ablation(s: Study) -> dict | None:
    """The regularization study's variant without label smoothing against its baseline (report_facts.compare)."""
    reg = {v["variant"]: v["val"] for v in s.regularization() if v["variant"] in ("baseline", "no-smoothing")}
    return compare(reg, s.one_val, s.tie_k)["no-smoothing"] if len(reg) == 2 else None


def smoothing(s: Study) -> dict:
    """The label-smoothed target of the study's runs: ε, and the weight on the true digit and on each other one."""
    eps, k = s.cards[s.models[0]]["train_config"]["label_smoothing"], len(s.data.get("classes", range(10)))
    return {"eps": eps, "on": round(1 - eps + eps / k, 6), "off": round(eps / k, 6)}


def write(path: Path, text: str) -> Path:
    """Replace path's content at once (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_report(root: Path = ROOT) -> Path:
    """Write report.md, the appendix and weights/<model>.md; returns report.md's path."""
    s, env = Study(root), environment()
    ctx = context(s)
    path = write(root / "report.md", env.get_template("report.md.j2").render(ctx))
    write(root / APPENDIX, env.get_template("appendix.md.j2").render(ctx))
    card = env.get_template("model_card.md.j2")
    for m in s.shipped:
        write(root / "weights" / f"{m}.md", card.render(ctx, m=m, run=s.shipped_run(m), user=s.user_images(m),
                                                        confusions=s.confusions(m)))
    return path


def replace_block(text: str, name: str, body: str) -> str:
    """text with the lines between README's markers <!-- name ... --> and <!-- /name --> replaced by body."""
    begin, end = f"<!-- {name} ", f"<!-- /{name} -->"
    if begin not in text or end not in text:
        return text
    head, rest = text.split(begin, 1)
    marker, _, _ = rest.partition("\n")
    _, tail = rest.split(end, 1)
    return f"{head}{begin}{marker}\n{body.rstrip()}\n{end}{tail}"


def update_readme(root: Path = ROOT) -> bool:
    """Fill the generated blocks of README.md and docs/*.md in place: the models' results (README), the ConvNet's
    calibration and the users'-images table (benchmarks/results/user_images.md, copied; docs/your-images.md).
    False when README has none."""
    path = root / "README.md"
    if not path.exists():
        return False
    env, ctx = environment(), context(Study(root))
    calibration = read_json(root / "results" / "calibration" / "convnet.json")
    bodies = {name: env.get_template(template).render(ctx, calibration=calibration)
              for name, template in BLOCKS.items() if name != "calibration:convnet" or calibration}
    if (table := root / "benchmarks" / "results" / "user_images.md").exists():
        bodies["user_images:table"] = table.read_text()
    for doc in [path, *sorted((root / "docs").glob("*.md"))]:
        text = new = doc.read_text()
        for name, body in bodies.items():
            new = replace_block(new, name, body)
        if new != text:
            write(doc, new)
    return "<!-- study:models " in path.read_text()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(ROOT), help="the study's root (default: this repository)")
    p.add_argument("--figures", action="store_true", help="also redraw the report's figures (needs DATA_DIR for the features)")
    p.add_argument("--screenshots", action="store_true", help="also render results/logs/*.txt to screenshots/")
    a = p.parse_args(argv)
    root = Path(a.root).resolve()
    if a.figures:
        print("figures:", ", ".join(draw_figures(root)))
    if a.screenshots:
        print("screenshots:", ", ".join(render_screenshots(root)))
    print(f"wrote {write_report(root)}, {root / APPENDIX} and the model cards weights/*.md")
    if update_readme(root):
        print(f"updated {root / 'README.md'}'s generated blocks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
