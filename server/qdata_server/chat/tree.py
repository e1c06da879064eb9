"""Where a message sits in its session's tree: its depth and one jump pointer.

A branch is the path from a leaf up to a root through parent numbers. Parents alone make "the
last N of a branch" a walk of N steps, but an ascending page first has to find where on the
branch it starts, which by parents is a walk of the whole branch. So each message also records
its depth (a root is 1) and one jump pointer to a farther ancestor, set by Myers' skew-binary rule
("An applicative random-access stack", 1983): from any message, the deepest ancestor that
satisfies a condition holding for every message above it ("depth at most d", "numbered at most
n") is found in O(log depth) steps by taking the jump when it does not overshoot and the parent
otherwise (about 33 steps at depth 20,000). The queries doing that are list_chat_branch_* in
db/queries/chat.sql; the columns are 0011_chat_branch_jumps.sql's, whose backfill applies this
same rule to the messages that existed before.

The jump of a message with parent p is the jump of p's jump when p and its jump are as far apart
as p's jump and the jump after it, and p itself otherwise. The virtual message 0 above every root
has depth 0 and jumps to itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Place:
    """A message's place in its tree (columns depth, jump_sequence_number, jump_depth)."""

    sequence_number: int
    depth: int
    jump_sequence_number: int
    jump_depth: int


# The virtual parent of every root.
ABOVE_ROOTS = Place(sequence_number=0, depth=0, jump_sequence_number=0, jump_depth=0)


def places_by_number(rows: Iterable[Mapping[str, Any]]) -> dict[int, Place]:
    """Places from rows with the four columns, keyed by sequence number, with ABOVE_ROOTS added."""
    found = {
        row["sequence_number"]: Place(
            sequence_number=row["sequence_number"],
            depth=row["depth"],
            jump_sequence_number=row["jump_sequence_number"],
            jump_depth=row["jump_depth"],
        )
        for row in rows
    }
    return {0: ABOVE_ROOTS, **found}


def child_place(parent: Place, parent_jump: Place, sequence_number: int) -> Place:
    """The place of a new child of parent (parent_jump is the message parent jumps to)."""
    if parent.sequence_number and parent.depth - parent.jump_depth == parent.jump_depth - parent_jump.jump_depth:
        jump, jump_depth = parent_jump.jump_sequence_number, parent_jump.jump_depth
    else:
        jump, jump_depth = parent.sequence_number, parent.depth
    return Place(
        sequence_number=sequence_number, depth=parent.depth + 1, jump_sequence_number=jump, jump_depth=jump_depth
    )


def chain_places(parent: int, known: Mapping[int, Place], first: int, count: int) -> list[Place]:
    """Places of a chain of count new messages numbered first, first + 1, ... under parent.

    known must hold parent and the messages its jump pointers lead to (chat_message_jump_chain):
    a child jumps to its parent or to the jump of its parent's jump, so every jump in the chain
    lands on a new message or on one of those.
    """
    places = dict(known)
    places.setdefault(0, ABOVE_ROOTS)
    current = places[parent]
    chain: list[Place] = []
    for number in range(first, first + count):
        current = child_place(current, places[current.jump_sequence_number], number)
        places[number] = current
        chain.append(current)
    return chain
