"""Model zoo: published Phi checkpoints by name, fetched once, checked; hub ids; tested on a loopback server."""

from __future__ import annotations

import http.server
import threading
from functools import partial

import pytest
import torch

from zscir.errors import ModelLoadError
from zscir.models import zoo
from zscir.models.phi import Phi, load_inversion_network, save_published_phi

P, H, D = 8, 6, 32


@pytest.fixture()
def server(tmp_path):
    """A loopback HTTP server over tmp_path/www; yields (base URL, list of requested paths)."""
    www = tmp_path / "www"
    www.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www, requests
    httpd.shutdown()
    httpd.server_close()


def _entry(name, url, sha256=None, dims=(P, H, D)):
    return zoo.ZooEntry(name, url, f"{name}.pt", "tiny", *dims, sha256, "test")


def test_zoo_names_fetch_once_check_hash_and_format(server, tmp_path, monkeypatch):
    base, www, requests = server
    monkeypatch.setenv("ZSCIR_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    phi = Phi(P, H, D).eval()
    save_published_phi(phi, www / "good.pt")
    good_hash = zoo.sha256_of(www / "good.pt")
    entries = {
        "good": _entry("good", f"{base}/good.pt", good_hash),
        "unhashed": _entry("unhashed", f"{base}/good.pt"),
        "badhash": _entry("badhash", f"{base}/good.pt", "0" * 64),
        "missing": _entry("missing", f"{base}/nothing.pt"),
        "othershape": _entry("othershape", f"{base}/good.pt", dims=(P, H + 1, D)),
    }
    monkeypatch.setattr(zoo, "ZOO", entries)

    path = zoo.resolve_phi("good")
    assert path == tmp_path / "cache" / "zoo" / "good" / "good.pt"
    assert path.read_bytes() == (www / "good.pt").read_bytes()
    loaded = load_inversion_network(path)
    x = torch.randn(3, P)
    assert torch.equal(loaded(x), phi(x))
    assert requests.count("/good.pt") == 1  # fetched once, then served from the cache
    assert load_inversion_network(zoo.resolve_phi("unhashed")).config["output_dim"] == H  # no hash: format decides

    with pytest.raises(ModelLoadError, match="sha256"):
        zoo.resolve_phi("badhash")
    with pytest.raises(ModelLoadError, match="HTTP 404") as err:
        zoo.resolve_phi("missing")
    assert str(zoo.zoo_path(entries["missing"])) in str(err.value)  # says where to put the file by hand
    with pytest.raises(ModelLoadError, match="shapes"):
        zoo.resolve_phi("othershape")
    for name in ("badhash", "missing", "othershape"):  # nothing refused is left in the cache
        folder = zoo.zoo_path(entries[name]).parent
        assert not folder.exists() or not any(folder.iterdir()), name

    # a cached file that was changed afterwards is refused too
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelLoadError):
        zoo.resolve_phi("good")


def test_offline_says_which_file_to_put_where(tmp_path, monkeypatch):
    import socket

    monkeypatch.setenv("ZSCIR_CACHE", str(tmp_path / "cache"))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = _entry("gone", f"http://127.0.0.1:{port}/x.pt")
    monkeypatch.setattr(zoo, "ZOO", {"gone": entry})
    with pytest.raises(ModelLoadError) as err:
        zoo.resolve_phi("gone")
    message = str(err.value)
    assert "\n" not in message and entry.url in message and str(zoo.zoo_path(entry)) in message
    # put by hand where the message says: it is used (after the format check)
    zoo.zoo_path(entry).parent.mkdir(parents=True, exist_ok=True)
    save_published_phi(Phi(P, H, D), zoo.zoo_path(entry))
    assert zoo.resolve_phi("gone") == zoo.zoo_path(entry)


def test_published_names_and_hub_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert {"searle-vit-b32", "searle-vit-l14", "lincir-vit-l14"} <= set(zoo.ZOO)
    b32, l14 = zoo.ZOO["searle-vit-b32"], zoo.ZOO["lincir-vit-l14"]
    assert (b32.input_dim, b32.output_dim, b32.hidden_dim) == (512, 512, 2048)
    assert b32.url.endswith("SEARLE_ViT-B32.pt") and l14.url.endswith("lincir_large.pt")
    for spec in ("someone/some-phi", "someone/some-phi/phi_best.pt"):
        with pytest.raises(ModelLoadError, match="hub") as err:
            zoo.resolve_phi(spec)
        assert "\n" not in str(err.value)
    with pytest.raises(ModelLoadError, match="searle-vit-b32"):  # neither path, name nor hub id: lists the names
        zoo.resolve_phi("searle-vit-b33")
    local = tmp_path / "someone" / "phi.pt"  # an existing local path always wins
    local.parent.mkdir()
    save_published_phi(Phi(P, H, D), local)
    monkeypatch.chdir(tmp_path)
    assert zoo.resolve_phi("someone/phi.pt").resolve() == local.resolve()


def test_hub_ids_are_split_into_repo_and_file(tmp_path, monkeypatch):
    """owner/repo/sub/file.pt → hf_hub_download(owner/repo, sub/file.pt); owner/repo → a zscir folder."""
    import huggingface_hub

    from zscir.models.phi import save_pretrained

    calls = []
    save_published_phi(Phi(P, H, D), tmp_path / "file.pt")
    folder = save_pretrained(Phi(P, H, D), tmp_path / "folder")

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        return str(tmp_path / "file.pt") if filename.endswith(".pt") else str(folder / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert load_inversion_network(zoo.resolve_phi("someone/phis/sub/file.pt")).config["input_dim"] == P
    assert calls == [("someone/phis", "sub/file.pt")]
    calls.clear()
    assert load_inversion_network(zoo.resolve_phi("someone/zscir-phi")).config["output_dim"] == H
    assert calls == [("someone/zscir-phi", "config.json"), ("someone/zscir-phi", "model.safetensors")]


def test_load_inversion_network_takes_zoo_names_and_hub_ids(tmp_path, monkeypatch):
    """`--phi NAME` / `--phi owner/repo` reach the loader itself, not only `resolve_phi`."""
    from zscir.models.phi import save_pretrained

    folder = save_pretrained(Phi(P, H, D), tmp_path / "folder")
    save_published_phi(Phi(P, H, D), tmp_path / "zoo.pt")
    monkeypatch.setattr(zoo, "fetch_from_hub", lambda spec: folder if spec == "someone/zscir-phi" else None)
    monkeypatch.setattr(zoo, "fetch", lambda entry: tmp_path / "zoo.pt")
    assert load_inversion_network("someone/zscir-phi").config["output_dim"] == H
    assert load_inversion_network("searle-vit-b32").config["input_dim"] == P
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        load_inversion_network(tmp_path / "missing.pt")


def test_zscir_models_lists_the_zoo_and_what_is_cached(tmp_path, monkeypatch, capsys):
    from zscir.cli import main
    from zscir.models.zoo import ZOO, zoo_path

    monkeypatch.setenv("ZSCIR_CACHE", str(tmp_path))
    first = next(iter(ZOO.values()))
    zoo_path(first).parent.mkdir(parents=True)
    zoo_path(first).write_bytes(b"x")
    assert main(["models"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    for name, entry in ZOO.items():
        assert entry.url in lines[name]
        assert ("[cached]" in lines[name]) == (entry is first), lines[name]
        assert entry is first or str(zoo_path(entry)) in lines[name]


def test_commands_take_zoo_names_and_refuse_a_misspelt_one_before_any_work(tmp_path, capsys):
    from zscir.cli import main
    from zscir.models.zoo import ZOO

    triplets = tmp_path / "t.jsonl"
    triplets.write_text("")
    for argv in (["train-rtd", "--triplets", str(triplets), "--backbone", "ViT-L/14"],
                 ["evaluate", "--dataset", "cirr", "--root", str(tmp_path), "--backbone", "ViT-L/14"]):
        assert main([*argv, "--phi", "lincir-vit-l15"]) == 2
        err = capsys.readouterr().err
        assert "--phi lincir-vit-l15" in err and all(name in err for name in ZOO), err
        assert main([*argv, "--phi", "lincir-vit-l14"]) == 2  # a zoo name passes the flag check ...
        assert "no such file" not in capsys.readouterr().err  # ... and fails later, offline, on the backbone
