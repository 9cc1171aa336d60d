"""The LaTeX a report writes, compiled with pdflatex: docs/paper/main.tex against a fresh real study's report, and
every table of the synthetic study in each table style. A table wider than the page fails (Overfull \\hbox)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from reports.build import build_report

PAPER = Path(__file__).resolve().parents[2] / "docs" / "paper" / "main.tex"
APT_PACKAGES = "texlive-latex-base texlive-latex-recommended"
OVERFULL = re.compile(r"Overfull \\hbox \((\d+(?:\.\d+)?)pt too wide\)")
TOLERANCE_PT = 1.0


def pdflatex(source: str, folder: Path) -> str:
    """Compile `source` (a file, or TeX on the command line) in `folder`; the log, after asserting a clean exit."""
    if shutil.which("pdflatex") is None:
        pytest.fail(f"pdflatex is not installed; the LaTeX tests need it: apt-get install {APT_PACKAGES}")
    folder.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "-jobname=paper", source],
                         cwd=folder, capture_output=True, text=True, timeout=120)
    log = (folder / "paper.log").read_text(errors="replace")
    assert run.returncode == 0, log[-3000:]
    assert (folder / "paper.pdf").read_bytes().startswith(b"%PDF")
    return log


def overfull(log: str) -> list[float]:
    return [float(pt) for pt in OVERFULL.findall(log) if float(pt) > TOLERANCE_PT]


def inputs(tex: str) -> set[str]:
    return set(re.findall(r"\\input\{\\reportdir/tables/([^}]+)\}", tex))


def test_the_paper_compiles_against_a_fresh_report_and_its_tables_fit_the_page(tiny_real_study, tmp_path) -> None:
    # The tiny study's untrained models log FIDs in the thousands with intervals as wide: its tables are resized to
    # the line (the committed quickstart and the synthetic two-factor study check the plain style's fit).
    report = build_report(tiny_real_study.NAME, tmp_path / "report", {"tex", "md"}, table_style="resized",
                          tracking_uri=tiny_real_study.tracking_uri)
    paper = PAPER.read_text()
    # The paper sets every table and figure the report has.
    assert inputs(paper) == {p.name for p in (report.folder / "tables").glob("*.tex")} == {"overall.tex",
                                                                                             "ablation_f.tex"}
    figures = set(re.findall(r"\\includegraphics\[[^]]*\]\{\\reportdir/figures/([^}]+)\}", paper))
    assert figures == {f.pdf.name for f in report.figures}
    log = pdflatex(rf"\def\reportdir{{{report.folder}}}\input{{{PAPER}}}", tmp_path / "build")
    assert f"{report.folder}/tables/overall.tex" in log.replace("\n", "")  # the fresh tables, not docs/quickstart
    assert overfull(log) == []


def test_the_paper_compiles_as_committed(tmp_path) -> None:
    """Against the committed docs/quickstart report, from its own folder, as the README says to build it."""
    build = tmp_path / "paper"
    shutil.copytree(PAPER.parent, build)
    shutil.copytree(PAPER.parents[1] / "quickstart", tmp_path / "quickstart")
    assert overfull(pdflatex("main.tex", build)) == []


@pytest.mark.parametrize("style", ["plain", "resized", "landscape"])
def test_every_table_of_a_two_factor_study_compiles_in_each_style(synthetic_store, tmp_path, style) -> None:
    report = build_report(synthetic_store.FULL_STUDY, tmp_path / "report", {"tex"}, table_style=style,
                          tracking_uri=synthetic_store.tracking_uri)
    tables = sorted((report.folder / "tables").glob("*.tex"))
    assert [t.name for t in tables] == ["ablation_f.tex", "ablation_schedule.tex", "overall.tex"]
    packages = {p for t in tables for p in re.search(r"\\usepackage\{([^}]+)\}", t.read_text())[1].split(",")}
    document = "\n".join([r"\documentclass{article}", rf"\usepackage{{{','.join(sorted(packages))}}}",
                          r"\begin{document}", *(rf"\input{{{t}}}" for t in tables), r"\end{document}"])
    (tmp_path / "doc.tex").write_text(document)
    assert overfull(pdflatex(str(tmp_path / "doc.tex"), tmp_path / "build")) == []


def test_resized_tables_fit_however_many_columns(synthetic_store, tmp_path) -> None:
    every = [m for m in synthetic_store.final_metrics(4, 4, "cosine", 0) if "/" not in m]
    plain, resized = (build_report(synthetic_store.FULL_STUDY, tmp_path / style, {"tex"}, metrics=every,
                                   table_style=style, tracking_uri=synthetic_store.tracking_uri)
                      for style in ("plain", "resized"))
    logs = []
    for report in (plain, resized):
        overall = report.folder / "tables" / "overall.tex"
        document = "\n".join([r"\documentclass{article}", r"\usepackage{booktabs,graphicx}", r"\begin{document}",
                              rf"\input{{{overall}}}", r"\end{document}"])
        (report.folder / "doc.tex").write_text(document)
        logs.append(pdflatex(str(report.folder / "doc.tex"), report.folder / "build"))
    assert overfull(logs[0]) and max(overfull(logs[0])) > 500  # 15 metric columns are far wider than the page
    assert overfull(logs[1]) == []
