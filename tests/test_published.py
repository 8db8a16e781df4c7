"""Tests for iwae.experiments.published and references/published.yaml: the numbers equal papers.md's, the
tables are internally consistent, and the file ships with the installed package."""

from __future__ import annotations

from importlib import resources

import pytest
import yaml

from iwae.experiments import published


def test_yaml_loads_from_the_installed_package():
    text = resources.files("iwae").joinpath("references/published.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    assert set(data["papers"]) == {"burda2016", "rainforth2018"}
    assert data == published.load()


def test_load_returns_a_copy():
    data = published.load()
    data["papers"]["burda2016"]["table1"]["rows"][0]["vae_nll"] = 0.0
    assert published.burda2016_table1()[0]["vae_nll"] == 86.76


@pytest.mark.parametrize(
    "key, arxiv, venue", [("burda2016", "1509.00519", "ICLR 2016"), ("rainforth2018", "1802.04537", "ICML 2018")]
)
def test_citations(key, arxiv, venue):
    c = published.load()["papers"][key]["citation"]
    assert c["arxiv"] == arxiv and c["venue"] == venue and c["authors"] and c["title"]
    assert f"arXiv:{arxiv}" in published.citation(key)
    with pytest.raises(ValueError, match="unknown paper"):
        published.citation("kingma2014")


def test_every_table_states_its_sign():
    papers = published.load()["papers"]
    conventions = published.load()["sign_conventions"]
    for table in ("table1", "table2", "table3"):
        assert papers["burda2016"][table]["sign"] == "nll"
    assert papers["rainforth2018"]["table"]["sign"] == "log_likelihood"
    assert "positive" in conventions["nll"] and "negative" in conventions["log_likelihood"]
    assert "public reproduction" in papers["rainforth2018"]["table"]["source_note"]


def _row(rows, **match):
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, f"expected one row with {match}, found {len(found)}"
    return found[0]


def test_burda_numbers_match_papers_md():
    t1 = published.burda2016_table1()
    assert len(t1) == 12
    r = _row(t1, dataset="mnist", layers=1, k=50)
    assert (r["vae_nll"], r["vae_active"], r["iwae_nll"], r["iwae_active"]) == (86.35, [20], 84.78, [25])
    r = _row(t1, dataset="mnist", layers=2, k=50)
    assert (r["iwae_nll"], r["iwae_active"]) == (82.90, [26, 7])
    r = _row(t1, dataset="omniglot", layers=2, k=1)
    assert (r["vae_nll"], r["vae_active"], r["iwae_nll"], r["iwae_active"]) == (107.58, [28, 4], 107.56, [30, 5])
    t2 = published.burda2016_table2()
    assert [(r["nll_before"], r["nll_after"], r["active_after"]) for r in t2] == [
        (86.76, 84.88, [22]),
        (84.78, 86.02, [23]),
    ]
    t3 = published.burda2016_table3()
    assert _row(t3, layers=2, k=50)["iwae_nll"] == 85.32 and _row(t3, layers=1, k=5)["vae_nll"] == 88.83


def test_burda_internal_consistency():
    burda = published.load()["papers"]["burda2016"]
    protocol = burda["protocol"]
    assert protocol["epochs"] == sum(3**i for i in range(protocol["stages"])) == 3280
    assert protocol["batch_size"] == 20 and protocol["test_k"] == 5000
    assert burda["table2"]["continued_epochs"] == 3**7
    for r in published.burda2016_table1():
        assert r["vae_nll"] > 0 and r["iwae_nll"] > 0
        assert len(r["vae_active"]) == len(r["iwae_active"]) == r["layers"]
        if r["dataset"] == "mnist" and r["k"] == 1:  # the same algorithm, and the same published run
            assert (r["vae_nll"], r["vae_active"]) == (r["iwae_nll"], r["iwae_active"])
        if r["k"] > 1:  # IWAE's bound is tighter and it keeps at least as many units active
            assert r["iwae_nll"] < r["vae_nll"]
            assert sum(r["iwae_active"]) >= sum(r["vae_active"])


def test_rainforth_numbers_match_papers_md():
    rows = published.rainforth2018()
    assert [r["name"] for r in rows] == ["IWAE", "PIWAE (8,8)", "MIWAE (8,8)", "CIWAE beta=0.5", "VAE"]
    expected = {  # papers.md: IWAE-64, log p-hat, -KL
        "IWAE": (-86.11, -84.52, -1.59),
        "PIWAE (8,8)": (-85.74, -84.46, -1.28),
        "MIWAE (8,8)": (-85.69, -84.97, -0.72),
        "CIWAE beta=0.5": (-86.08, -85.24, -0.84),
        "VAE": (-86.69, -86.21, -0.47),
    }
    for r in rows:
        assert (r["iwae64"], r["log_p_hat"], r["neg_kl"]) == expected[r["name"]]


def test_rainforth_internal_consistency():
    for r in published.rainforth2018():
        assert r["m"] * r["k"] == 64, r["name"]
        assert abs(r["neg_kl"] - (r["iwae64"] - r["log_p_hat"])) <= 0.01 + 1e-9, r["name"]
        assert r["iwae64"] < r["log_p_hat"] < 0  # a looser bound than L_5000, log-likelihoods negative
        assert (r["beta"] is not None) == (r["objective"] == "ciwae")
