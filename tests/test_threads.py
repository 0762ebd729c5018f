from __future__ import annotations

import torch
from conftest import tiny_study

from lrsearch.config.spec import spec_from_dict
from lrsearch.training.prepared import prepare
from lrsearch.training.threads import configure_threads, pick_threads


def test_more_threads_only_when_clearly_faster() -> None:
    assert pick_threads({1: 1.00, 2: 0.95}) == 1  # a near-tie keeps 1: more threads lose when a core gets busy
    assert pick_threads({1: 1.00, 2: 0.80}) == 2
    assert pick_threads({1: 1.00, 2: 1.20}) == 1
    assert pick_threads({1: 1.00, 4: 0.80, 8: 0.75}) == 4  # 8 is not 15% faster than 4


def test_the_study_setting_wins_and_a_timed_choice_is_one_of_the_candidates() -> None:
    before = torch.get_num_threads()
    try:
        assert configure_threads(3) == 3 and torch.get_num_threads() == 3
        prepared = prepare(spec_from_dict(tiny_study()))
        chosen = configure_threads(None, workers=1, prepared=prepared)
        assert chosen in (1, torch.multiprocessing.cpu_count()) and torch.get_num_threads() == chosen
    finally:
        torch.set_num_threads(before)
