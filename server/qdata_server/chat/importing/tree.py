"""From a parsed conversation to the rows of the session: what is kept, in which order, where.

- A node is kept if it holds a message with content (NUL characters become U+FFFD, which
  PostgreSQL text cannot hold otherwise); a skipped node's children hang from its nearest kept
  ancestor, so the tree's shape is kept around it.
- Sequence numbers follow the source's times: a kept message is numbered once its parent is,
  the earliest first (its own time, else the time of its nearest timed ancestor, else the
  conversation's), ties in document order. So parents precede children, as qdata requires, and
  ListMessages' append order is the order the messages were written in.
- Each message gets its place (depth and jump pointer) by chat/tree.py's rule, as an append would.
- The current leaf is the source's current node, or its nearest kept ancestor; a format without
  one (LibreChat) takes the newest message.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import heapq
import json

from qdata_server.chat import tree
from qdata_server.chat.importing.model import MAX_DEPTH, MAX_NODES, BadExport, Conversation, SourceMessage
from qdata_server.chat.rules import MAX_MODEL_ID_LENGTH, MAX_TITLE_LENGTH, MAX_TOOL_FIELD_LENGTH
from qdata_server.validation import is_control

_EARLIEST = datetime.datetime.min.replace(tzinfo=datetime.UTC)


@dataclasses.dataclass
class Plan:
    """The session and message rows of one import, and what identifies its source."""

    source_id: str
    title: str
    model_id: str
    created_at: datetime.datetime
    last_activity_at: datetime.datetime
    current_leaf: int
    skipped: int
    digest: bytes
    columns: dict[str, list[object]]

    @property
    def count(self) -> int:
        return len(self.columns["roles"])


def plan(conv: Conversation, *, max_content_bytes: int, now: datetime.datetime) -> Plan:
    """The rows to insert for conv, or BadExport naming the first bad node."""
    if len(conv.nodes) > MAX_NODES:
        raise BadExport(conv.nodes_path, f"holds {len(conv.nodes)} nodes; at most {MAX_NODES} may be imported")
    by_key: dict[str, SourceMessage] = {}
    for node in conv.nodes:
        if node.key in by_key:
            raise BadExport(node.path, f"repeats the id {node.key!r} of {by_key[node.key].path}")
        by_key[node.key] = node
    for node in conv.nodes:
        if node.parent is not None and node.parent not in by_key:
            raise BadExport(node.path + node.parent_field, f"names {node.parent!r}, which is not in the export")
        node.content = node.content.replace("\x00", "\ufffd")
        size = len(node.content.encode("utf-8"))
        if size > max_content_bytes:
            raise BadExport(
                node.path, f"content takes {size} bytes of UTF-8; at most {max_content_bytes}", too_large=True
            )
    kept = {n.key for n in conv.nodes if n.role is not None and n.content}
    anchor = _anchors(conv.nodes, by_key, kept)
    times = _times(conv, by_key)

    children: dict[str | None, list[SourceMessage]] = {}
    for node in conv.nodes:
        if node.key in kept:
            parent = anchor[node.parent] if node.parent is not None else None
            children.setdefault(parent, []).append(node)
    order = {node.key: index for index, node in enumerate(conv.nodes)}

    def rank(node: SourceMessage) -> tuple[datetime.datetime, int]:
        return (times[node.key] or _EARLIEST, order[node.key])

    ready = [(rank(n), n.key) for n in children.get(None, [])]
    heapq.heapify(ready)
    number: dict[str, int] = {}
    places = {0: tree.ABOVE_ROOTS}
    cols: dict[str, list[object]] = {
        k: []
        for k in (
            "parents roles contents model_ids tool_call_ids created_ats depths jump_sequence_numbers jump_depths"
        ).split()
    }
    rows: list[list[object]] = []
    while ready:
        _, key = heapq.heappop(ready)
        node = by_key[key]
        seq = len(number) + 1
        number[key] = seq
        above_key = anchor[node.parent] if node.parent is not None else None
        parent_number = number[above_key] if above_key is not None else 0
        above = places[parent_number]
        place = tree.child_place(above, places[above.jump_sequence_number], seq)
        places[seq] = place
        created = times[key] or now
        model = node.model_id[:MAX_MODEL_ID_LENGTH]
        tool = node.tool_call_id[:MAX_TOOL_FIELD_LENGTH]
        for name, value in (
            ("parents", parent_number),
            ("roles", node.role),
            ("contents", node.content),
            ("model_ids", model),
            ("tool_call_ids", tool),
            ("created_ats", created),
            ("depths", place.depth),
            ("jump_sequence_numbers", place.jump_sequence_number),
            ("jump_depths", place.jump_depth),
        ):
            cols[name].append(value)
        # What the digest covers: the source's own values (no fallback time, so a re-upload of an
        # export without times digests the same).
        source_time = times[key]
        rows.append(
            [key, above_key, node.role, node.content, source_time.isoformat() if source_time else None, model, tool]
        )
        for child in children.get(key, []):
            heapq.heappush(ready, (rank(child), child.key))

    if conv.current is not None:
        leaf_key = anchor[conv.current]
        current_leaf = number[leaf_key] if leaf_key else 0
    else:
        newest = max((by_key[k] for k in number), key=rank, default=None)
        current_leaf = number[newest.key] if newest else 0
    message_times = [t for t in cols["created_ats"] if isinstance(t, datetime.datetime)]
    created_at = conv.created_at or min(message_times, default=now)
    title = "".join(" " if is_control(ch) else ch for ch in conv.title)[:MAX_TITLE_LENGTH]
    model_id = conv.model_id[:MAX_MODEL_ID_LENGTH]
    digest = hashlib.sha256(
        json.dumps(
            [
                conv.source_id,
                title,
                model_id,
                conv.created_at.isoformat() if conv.created_at else None,
                current_leaf,
                rows,
            ],
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8")
    ).digest()
    return Plan(
        source_id=conv.source_id,
        title=title,
        model_id=model_id,
        created_at=created_at,
        last_activity_at=max(message_times, default=created_at),
        current_leaf=current_leaf,
        skipped=len(conv.nodes) - len(number),
        digest=digest,
        columns=cols,
    )


def _anchors(nodes: list[SourceMessage], by_key: dict[str, SourceMessage], kept: set[str]) -> dict[str, str | None]:
    """Each node's nearest kept ancestor-or-self (None above the roots).

    Walks up from each node in document order until a resolved node or a root, so every node is
    walked once; a walk that meets itself is a cycle, and a kept depth over MAX_DEPTH is refused.
    """
    anchor: dict[str, str | None] = {}
    depth: dict[str, int] = {}  # depth of anchor[key] (0 above the roots)
    for start in nodes:
        chain: list[SourceMessage] = []
        seen: set[str] = set()
        node: SourceMessage | None = start
        while node is not None and node.key not in anchor:
            if node.key in seen:
                raise BadExport(start.path + start.parent_field, "leads into a cycle of parents")
            seen.add(node.key)
            chain.append(node)
            node = by_key[node.parent] if node.parent is not None else None
        above = anchor[node.key] if node is not None else None
        above_depth = depth[node.key] if node is not None else 0
        for walked in reversed(chain):
            if walked.key in kept:
                above, above_depth = walked.key, above_depth + 1
                if above_depth > MAX_DEPTH:
                    raise BadExport(walked.path, f"is {above_depth} messages deep; a branch holds at most {MAX_DEPTH}")
            anchor[walked.key] = above
            depth[walked.key] = above_depth
    return anchor


def _times(conv: Conversation, by_key: dict[str, SourceMessage]) -> dict[str, datetime.datetime | None]:
    """Each node's time: its own, else its nearest timed ancestor's, else the conversation's."""
    times: dict[str, datetime.datetime | None] = {}
    for start in conv.nodes:
        chain = []
        node: SourceMessage | None = start
        while node is not None and node.key not in times and node.created_at is None:
            chain.append(node)
            node = by_key[node.parent] if node.parent is not None else None
        if node is None:
            found = conv.created_at
        elif node.key in times:
            found = times[node.key]
        else:
            found = node.created_at
            times[node.key] = found
        for walked in chain:
            times[walked.key] = found
    return times
