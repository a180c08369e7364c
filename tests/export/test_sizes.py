"""The size rule derived from the probe: pure logic, no export."""

from sdrt.export import sizes


def test_one_upsampler_unet_whose_small_squares_pytorch_refuses():
    """diffusers' own tiny SDXL test config has 2 blocks: GroupNorm refuses 1x1 and 2x2 latents; the
    rule then starts above 2**n instead of failing the export."""
    pairs = sizes.probe_pairs(1)
    assert {(3, 3), (3, 4), (4, 3)} <= set(pairs)
    passed = {pair: pair not in ((1, 1), (2, 2)) for pair in pairs}
    assert sizes.admitted(passed, 1) == (1, 3)


def test_every_size_passing_admits_everything():
    passed = {pair: True for pair in sizes.probe_pairs(2)}
    assert sizes.admitted(passed, 2) == (1, 1)


def test_a_graph_that_only_works_at_multiples():
    """Passing only at multiples of 4 is no evidence that multiples of 2 work (before: (2, 4))."""
    passed = {(h, w): h % 4 == 0 and w % 4 == 0 for h, w in sizes.probe_pairs(2)}
    assert sizes.admitted(passed, 2) == (4, 4)


def test_nothing_passing_admits_nothing():
    assert sizes.admitted({pair: False for pair in sizes.probe_pairs(3)}, 3) is None
