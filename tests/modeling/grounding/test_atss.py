"""ATSS on hand-built anchors and boxes ("+1" geometry), with hand-computed positives."""

import torch

from fiber_det.modeling.grounding.atss import ATSSMatcher

# Level 0: four 10x10 anchors in a row; level 1: one 40x20 anchor over all of them.
LEVEL0 = torch.tensor([[10.0 * i, 0.0, 10.0 * i + 9, 9.0] for i in range(4)])
LEVEL1 = torch.tensor([[0.0, 0.0, 39.0, 19.0]])


def test_hand_computed_assignment():
    # g0 = [0, 0, 14, 9]: candidates a0, a1, a2 (level 0) + big; IoUs 2/3, 1/4, 0, 3/16;
    #   threshold = mean + std = 0.2760 + 0.2813 = 0.5573 -> only a0 (centre inside).
    # g1 = [2, 0, 39, 19]: IoU 100/760 with a1..a3, 0.95 with big; threshold 0.745 -> big.
    # g2 = [0, 0, 35, 19]: big passes too (IoU 0.9, threshold 0.710) but g1's 0.95 wins.
    gts = torch.tensor([[0.0, 0, 14, 9], [2.0, 0, 39, 19], [0.0, 0, 35, 19]])
    matched = ATSSMatcher(topk=3)([LEVEL0, LEVEL1], gts)
    assert matched.tolist() == [0, -1, -1, -1, 1]


def test_second_best_gt_alone_takes_the_anchor():
    matched = ATSSMatcher(topk=3)([LEVEL0, LEVEL1], torch.tensor([[0.0, 0, 35, 19]]))
    assert matched.tolist() == [-1, -1, -1, -1, 0]


def test_centre_outside_the_box_is_never_positive():
    # g = [0, 0, 9, 4]: a0 has the best IoU (50/100) but its centre y = 4.5 lies below y2 = 4.
    matched = ATSSMatcher(topk=3)([LEVEL0, LEVEL1], torch.tensor([[0.0, 0, 9, 4]]))
    assert matched.tolist() == [-1, -1, -1, -1, -1]


def test_no_ground_truth_gives_all_negative():
    matched = ATSSMatcher(topk=9)([LEVEL0, LEVEL1], torch.zeros(0, 4))
    assert matched.tolist() == [-1] * 5
