"""The jump pointers of chat/tree.py: where they point, and that the walks over them are short."""

import math
import random

from qdata_server.chat import tree


def build(parents: dict[int, int]) -> dict[int, tree.Place]:
    """Places of a tree given as {sequence_number: parent}, each child placed as AppendMessages
    places it: from its parent's jump chain only (what chat_message_jump_chain returns)."""
    places = {0: tree.ABOVE_ROOTS}
    for number in sorted(parents):
        chain, at = {}, parents[number]
        while at:
            chain[at] = places[at]
            at = places[at].jump_sequence_number
        [places[number]] = tree.chain_places(parents[number], chain, number, 1)
    return places


def ancestors(parents: dict[int, int], number: int) -> list[int]:
    path = []
    while number:
        path.append(number)
        number = parents[number]
    return path


def deepest(places: dict[int, tree.Place], parents: dict[int, int], start: int, holds) -> tuple[int, int]:
    """The deepest ancestor of start (itself included) for which holds(place) is true, where holds
    is true for every ancestor above one it is true for, found as the list_chat_branch_* queries
    do: take the jump unless it lands on a message for which holds is true, else the parent.
    Returns the ancestor's number (0 above the root) and the steps taken."""
    steps, at = 0, places[start]
    while at.sequence_number and not holds(at):
        jump = places[at.jump_sequence_number]
        at = jump if not holds(jump) else places[parents[at.sequence_number]]
        steps += 1
    return at.sequence_number, steps


def test_a_chain_jumps_by_the_skew_binary_rule():
    places = {0: tree.ABOVE_ROOTS}
    chain = tree.chain_places(0, places, 1, 30)
    assert [p.depth for p in chain] == list(range(1, 31))
    # Depth d jumps to depth J(d); in a chain from 1 the numbers are the depths.
    assert [p.jump_depth for p in chain[:15]] == [0, 1, 0, 3, 4, 3, 0, 7, 8, 7, 10, 11, 10, 7, 0]
    assert all(p.jump_sequence_number == p.jump_depth for p in chain)


def test_jumps_lead_to_ancestors_in_a_tree_with_branches():
    rng = random.Random(7)
    parents = {1: 0}
    for number in range(2, 3000):
        # Mostly a continuation of the previous message, sometimes an edit further up or a new root.
        choice = rng.random()
        parents[number] = number - 1 if choice < 0.85 else (0 if choice > 0.99 else rng.randrange(1, number))
    places = build(parents)
    for number, place in places.items():
        if not number:
            continue
        path = ancestors(parents, number)
        assert place.depth == len(path)
        assert place.jump_sequence_number in [*path[1:], 0]
        assert place.jump_depth == (places[place.jump_sequence_number].depth if place.jump_sequence_number else 0)
    # The walks find what a walk by parents finds, on any branch.
    for number in rng.sample(range(1, 3000), 100):
        path = ancestors(parents, number)
        for bound in rng.sample(range(3000), 20):
            found, _ = deepest(places, parents, number, lambda p, b=bound: p.sequence_number <= b)
            assert found == next((n for n in path if n <= bound), 0)
            depth = rng.randrange(len(path) + 1)
            found, _ = deepest(places, parents, number, lambda p, d=depth: p.depth <= d)
            assert found == (path[len(path) - depth] if depth else 0)


def test_walks_over_the_jumps_take_logarithmic_steps():
    parents = {n: n - 1 for n in range(1, 100_001)}
    places = build(parents)
    rng = random.Random(1)
    for start in [20_000, 65_535, 65_536, 100_000, *rng.sample(range(1, 100_001), 30)]:
        bound = 3 * math.log2(start + 1)
        for target in [0, 1, start // 2, start - 1, start, *rng.sample(range(start), min(start, 40))]:
            found, steps = deepest(places, parents, start, lambda p, t=target: p.depth <= t)
            assert found == target and steps <= bound, (start, target, steps)
            found, steps = deepest(places, parents, start, lambda p, t=target: p.sequence_number <= t)
            assert found == target and steps <= bound, (start, target, steps)
    # The jump chain a new child needs is as short.
    for number in rng.sample(range(1, 100_001), 200):
        length, at = 0, number
        while at:
            at, length = places[at].jump_sequence_number, length + 1
        assert length <= 2 * math.log2(number + 1), (number, length)
