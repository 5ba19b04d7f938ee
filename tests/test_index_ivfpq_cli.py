"""`zscir index --backend ivfpq` end to end on a small folder: the build, its recall report and a search."""

import json

import numpy as np
import pytest
from PIL import Image


@pytest.mark.parametrize("codes", [[], ["--fast-scan"]], ids=["8-bit", "fast-scan"])
def test_cli_index_ivfpq_reports_recall_and_searches(tiny_clip_dir, tmp_path, capsys, codes):
    from zscir.cli import main

    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(300):  # enough rows for the PQ codebooks and a held-out sample
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((16, 16)).save(folder / f"{i:03d}.png")
    out = tmp_path / "idx"
    assert main(["index", "--images", str(folder), "--backbone", str(tiny_clip_dir), "--output-dir", str(out),
                 "--backend", "ivfpq", "--memory-budget", "64MB", *codes]) == 0
    printed = capsys.readouterr().out
    assert ("x4fs" in printed) == bool(codes)  # the spec line names the fast-scan codes
    assert "300 images indexed" in printed and "ivfpq:" in printed and "recall@" in printed
    assert main(["search", "--index", str(out), "--image", str(folder / "007.png"), "--method", "image",
                 "-k", "3", "--json", "--keep-reference"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 3 and hits[0]["relpath"] == "007.png"
