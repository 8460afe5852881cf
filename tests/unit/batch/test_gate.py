"""The publication gate as pure functions: which candidate is served, and may it replace the current one."""

from __future__ import annotations

import math

from flixlake.batch.gate import choose_recommender, judge_candidates, publish_decision
from flixlake.config import PublishConfig

BASE = PublishConfig()  # conf/base.yaml: both margins 1.0, 5% regression
CFG = PublishConfig(min_lift_over_popularity=1.0, max_regression=0.25)


def test_the_best_ndcg_is_served_when_the_margins_are_one() -> None:
    ndcg = {"als": 0.12, "popularity": 0.05, "itemknn": 0.11, "ease": 0.13}
    choice = choose_recommender(ndcg, BASE)
    assert choice.winner == "ease" and choice.ndcg == 0.13
    assert choice.reason.startswith("ease is served (NDCG 0.1300)")
    assert "ALS NDCG 0.1200 does not beat ease 0.1300 x 1 = 0.1300" in choice.reason
    choice = choose_recommender({**ndcg, "als": 0.14}, BASE)
    assert choice.winner == "als" and choice.ndcg == 0.14
    assert "> best baseline ease 0.1300 x 1 = 0.1300" in choice.reason


def test_popularity_is_served_when_it_is_the_best() -> None:
    choice = choose_recommender({"als": 0.166, "popularity": 0.22, "itemknn": 0.149}, BASE)
    assert choice.winner == "popularity"
    assert "ALS NDCG 0.1660 does not beat popularity 0.2200 x 1 = 0.2200" in choice.reason


def test_ties_go_to_the_simpler_candidate() -> None:
    assert choose_recommender({"als": 0.2, "popularity": 0.1, "ease": 0.2}, BASE).winner == "ease"
    assert choose_recommender({"als": 0.1, "popularity": 0.2, "itemknn": 0.2}, BASE).winner == (
        "popularity"
    )
    tie = {"als": 0.2, "popularity": 0.1, "itemknn": 0.2, "ease": 0.2}
    assert choose_recommender(tie, BASE).winner == "itemknn"


def test_a_learned_recommender_must_beat_popularity_by_its_margin() -> None:
    margin = PublishConfig(min_lift_over_popularity=1.5)
    # item-kNN 0.14 is the best baseline but not > 0.10 x 1.5: popularity is served
    choice = choose_recommender({"als": 0.145, "popularity": 0.10, "itemknn": 0.14}, margin)
    assert choice.winner == "popularity"
    assert "itemknn 0.1400 does not beat popularity 0.1000 x 1.5 = 0.1500" in choice.reason
    # ALS clears both popularity's margin and the best baseline
    assert choose_recommender(
        {"als": 0.16, "popularity": 0.10, "itemknn": 0.14}, margin
    ).winner == ("als")


def test_als_must_beat_the_best_baseline_by_its_margin() -> None:
    margin = PublishConfig(min_lift_over_baseline=1.2)
    ndcg = {"als": 0.15, "popularity": 0.05, "itemknn": 0.13}
    choice = choose_recommender(ndcg, margin)
    assert choice.winner == "itemknn"
    assert "does not beat itemknn 0.1300 x 1.2 = 0.1560" in choice.reason
    assert choose_recommender({**ndcg, "als": 0.16}, margin).winner == "als"


def test_unmeasured_candidates_do_not_count() -> None:
    ndcg = {"als": math.nan, "popularity": 0.1, "itemknn": 0.2, "ease": None}
    choice = choose_recommender(ndcg, BASE)
    assert choice.winner == "itemknn" and "ALS was not measured" in choice.reason
    assert choose_recommender({"als": 0.3}, BASE).winner is None


def test_publish_needs_a_measurement() -> None:
    decision = publish_decision({"als": 0.0, "popularity": 0.0}, None, CFG, n_users=0)
    assert decision.published is False and "nothing was measured" in decision.reason
    decision = publish_decision({"als": math.nan, "popularity": None}, None, CFG)
    assert decision.published is False and decision.winner is None


def test_publish_without_an_incumbent_serves_the_winner() -> None:
    decision = publish_decision({"als": 0.12, "popularity": 0.10}, None, CFG)
    assert decision.published is True and decision.winner == "als"
    assert "no published model" in decision.reason
    decision = publish_decision({"als": 0.12, "popularity": 0.10, "itemknn": 0.2}, None, CFG)
    assert decision.published is True and decision.winner == "itemknn"


def test_the_winner_may_regress_from_the_incumbent_only_within_the_bound() -> None:
    # current 0.5, max_regression 0.25 -> floor 0.375 (exact in binary floating point)
    assert publish_decision({"als": 0.375, "popularity": 0.1}, 0.5, CFG).published is True
    decision = publish_decision({"als": 0.37, "popularity": 0.1}, 0.5, CFG)
    assert decision.published is False and decision.winner is None
    assert "regresses more than 25%" in decision.verdicts["als"].describe()
    assert "on the same window" in decision.reason
    # every candidate is held to the same bound: popularity 0.3 < 0.375, ALS 0.2 too
    decision = publish_decision({"als": 0.2, "popularity": 0.3}, 0.5, CFG)
    assert decision.published is False and decision.winner is None
    assert not decision.verdicts["popularity"].eligible
    decision = publish_decision({"als": 0.2, "popularity": 0.3, "ease": 0.6}, 0.5, CFG)
    assert decision.published is True and decision.winner == "ease"
    assert ">= current model's 0.5000" in decision.reason


LONG_TAIL = "system requirement NOT met (lists): long-tail share 0.040 < 0.2"


def test_the_best_candidate_that_meets_the_requirements_is_served() -> None:
    # MovieLens-like: popularity scores best but shows only the head; EASE is next and passes
    ndcg = {"als": 0.133, "popularity": 0.173, "itemknn": 0.115, "ease": 0.135}
    unmet = {"popularity": ["system requirement NOT met (lists): long-tail share 0.000 < 0.2"]}
    decision = publish_decision(ndcg, None, BASE, unmet=unmet)
    assert decision.published is True and decision.winner == "ease"
    assert decision.verdicts["popularity"].eligible is False
    assert "long-tail share 0.000" in decision.verdicts["popularity"].describe()
    assert "popularity (NDCG 0.1730) refused: system requirement NOT met" in decision.reason
    # popularity's margin binds only an eligible popularity: EASE need not beat the refused 0.173
    assert decision.verdicts["ease"].note == "served"
    assert decision.verdicts["als"].eligible and "not served" in decision.verdicts["als"].note


def test_a_refused_best_baseline_does_not_stop_als() -> None:
    ndcg = {"als": 0.165, "popularity": 0.129, "itemknn": 0.122, "ease": 0.17}
    choice = judge_candidates(ndcg, BASE, {"ease": ["model requirement NOT met (offline): x"]})
    assert choice.winner == "als"
    assert "> best baseline popularity" not in choice.reason  # popularity is no baseline here
    assert "ease (NDCG 0.1700) refused: model requirement NOT met" in choice.reason


def test_the_second_is_served_when_the_first_fails_a_requirement_and_margins_still_apply() -> None:
    margin = PublishConfig(min_lift_over_popularity=1.5)
    ndcg = {"als": 0.16, "popularity": 0.10, "itemknn": 0.14}
    # ALS is refused; item-kNN 0.14 does not beat the eligible popularity x 1.5: popularity served
    choice = judge_candidates(ndcg, margin, {"als": [LONG_TAIL]})
    assert choice.winner == "popularity"
    assert choice.verdicts["itemknn"].eligible
    assert "does not beat popularity 0.1000 x 1.5" in choice.verdicts["itemknn"].note
    assert "ALS (NDCG 0.1600) is refused: " + LONG_TAIL in choice.reason


def test_nothing_is_published_when_no_candidate_is_eligible_with_a_reason_each() -> None:
    ndcg = {"als": 0.133, "popularity": 0.173, "itemknn": 0.115, "ease": 0.135}
    unmet = {
        "popularity": ["system requirement NOT met (lists): long-tail share 0.000 < 0.2"],
        "itemknn": ["model requirement NOT met (offline): worst gender=F"],
        "ease": ["system requirement NOT met (lists): long-tail share 0.110 < 0.2"],
        "als": [LONG_TAIL],
    }
    decision = publish_decision(ndcg, None, BASE, unmet=unmet)
    assert decision.published is False and decision.winner is None
    assert decision.reason.startswith("no candidate is eligible: ")
    assert set(decision.verdicts) == {"als", "popularity", "itemknn", "ease"}
    for name, lines in unmet.items():
        verdict = decision.verdicts[name]
        assert not verdict.eligible and verdict.refusals == tuple(lines)
        assert verdict.describe() in decision.reason
    assert decision.verdicts["ease"].as_dict()["refusals"] == unmet["ease"]
