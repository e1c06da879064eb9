"""SearchMessages: PostgreSQL full-text search over one user's live messages.

The query is parsed with websearch_to_tsquery ("quoted phrases", "or", "-word") against the
generated `search` tsvector (english configuration, so words are stemmed), ranked with
ts_rank_cd, and each hit gets a ts_headline excerpt. ts_headline marks the matches with two
private-use characters; they are turned into code-point offsets here, and the snippet is returned
as plain text on one line: the whole message if it has at most 300 characters, else up to two
excerpts around the best matches. ts_headline would also drop anything that looks like an HTML tag
("use <b>bold</b>" -> "use bold"), so the query hands it every "<" as a third private-use
character, turned back here: code and markup in a chat appear in the snippet as written. The
three characters are removed from the content first, so none can be forged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qdata.v1 import chat_pb2
from qdata_server.chat import convert, rules
from qdata_server.chat.sessions import load_session
from qdata_server.db.connection import Conn
from qdata_server.db.sql import fetch_all
from qdata_server.db.transactions import acting_for
from qdata_server.pagination import page_size
from qdata_server.users.accounts import load_live_user
from qdata_server.validation import Violations

if TYPE_CHECKING:
    from qdata_server.deps import Deps

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
MAX_SNIPPET_LENGTH = 300
START_SEL = "\ue000"
STOP_SEL = "\ue001"
# What ts_headline sees instead of "<", so it finds no tags to drop.
LESS_THAN = "\ue002"
FRAGMENT_DELIMITER = " … "
# Two fragments of at most 20 words around the best matches keep a snippet near 300 characters.
HEADLINE_OPTIONS = (
    f"StartSel={START_SEL}, StopSel={STOP_SEL}, MaxWords=20, MinWords=8, MaxFragments=2, "
    f'FragmentDelimiter="{FRAGMENT_DELIMITER}"'
)
# A message that fits in a snippet is its own snippet: fragments would trim words at their edges
# ("use this bold and markup" -> "this bold and markup").
WHOLE_MESSAGE_OPTIONS = f"StartSel={START_SEL}, StopSel={STOP_SEL}, HighlightAll=true"


async def search_messages(deps: Deps, request: chat_pb2.SearchMessagesRequest) -> chat_pb2.SearchMessagesResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    session_id = v.uuid("session_id", request.session_id, required=False)
    query = request.query
    if not query.strip():
        v.add("query", "is required")
    elif len(query) > rules.MAX_QUERY_LENGTH:
        v.add("query", f"must be at most {rules.MAX_QUERY_LENGTH} characters (got {len(query)})")
    elif "\x00" in query:
        v.add("query", "must not contain NUL characters")
    roles = set()
    for index, role in enumerate(request.roles):
        if role not in rules.ROLE_TO_DB:
            v.add(f"roles[{index}]", "must be MESSAGE_ROLE_SYSTEM, _USER, _ASSISTANT or _TOOL")
        else:
            roles.add(rules.ROLE_TO_DB[role])
    if request.page_size < 0:
        v.add("page_size", "must not be negative")
    v.raise_if_any()
    assert user_id is not None  # raise_if_any() passed
    limit = page_size(request.page_size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
    filters = {
        "user_id": str(user_id),
        "query": query,
        "session_id": str(session_id) if session_id else "",
        "roles": sorted(roles),
    }
    tokens = await deps.page_tokens()
    cursor = tokens.open(request.page_token, "SearchMessages", filters)

    async def work(conn: Conn) -> list[dict[str, Any]]:
        await load_live_user(conn, user_id)
        if session_id is not None:
            await load_session(conn, user_id, session_id)
        return await fetch_all(
            conn,
            "search_chat_messages",
            {
                "user_id": user_id,
                "query": query,
                "session_id": session_id,
                "roles": sorted(roles),
                "after_score": cursor[0] if cursor else None,
                "after_created_at": cursor[1] if cursor else None,
                "after_session_id": cursor[2] if cursor else None,
                "after_sequence_number": cursor[3] if cursor else None,
                "limit": limit + 1,
                "start_sel": START_SEL,
                "stop_sel": STOP_SEL,
                "less_than": LESS_THAN,
                "headline_options": HEADLINE_OPTIONS,
                "whole_message_options": WHOLE_MESSAGE_OPTIONS,
                "whole_message_length": MAX_SNIPPET_LENGTH,
            },
        )

    rows = await deps.transaction(work, acting=acting_for(user_id))
    next_token = ""
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_token = tokens.seal(
            "SearchMessages",
            filters,
            [last["score"], last["created_at"].isoformat(), str(last["session_id"]), last["sequence_number"]],
        )
    return chat_pb2.SearchMessagesResponse(hits=[_hit(row) for row in rows], next_page_token=next_token)


def _hit(row: dict[str, Any]) -> chat_pb2.SearchHit:
    snippet, highlights = parse_headline(row["snippet"])
    return chat_pb2.SearchHit(
        session_id=str(row["session_id"]),
        session_title=row["session_title"],
        sequence_number=row["sequence_number"],
        role=rules.ROLE_FROM_DB[row["role"]],
        create_time=convert.timestamp(row["created_at"]),
        snippet=snippet,
        highlights=highlights,
        score=row["score"],
    )


def parse_headline(marked: str, limit: int = MAX_SNIPPET_LENGTH) -> tuple[str, list[chat_pb2.SearchHighlight]]:
    """Plain snippet and highlight spans (code-point offsets) from a ts_headline with markers.

    LESS_THAN turns back into "<". Whitespace runs collapse to one space and the ends are trimmed,
    so the snippet reads as one line; a snippet longer than limit is cut at a word boundary and
    ends with "…", keeping only the highlights that lie wholly within it.
    """
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    start: int | None = None
    for ch in marked:
        if ch == START_SEL:
            start = len(out)
        elif ch == STOP_SEL:
            if start is not None and len(out) > start:
                spans.append((start, len(out)))
            start = None
        elif ch == LESS_THAN:
            out.append("<")
        elif ch.isspace():
            if out and out[-1] != " ":
                out.append(" ")
        else:
            out.append(ch)
    text = "".join(out)
    # A trailing space (already counted in no span: spans end at non-space characters) goes.
    text = text.rstrip(" ")
    if len(text) > limit:
        cut = text.rfind(" ", 0, limit)
        cut = cut if cut > limit // 2 else limit - 1
        text = text[:cut].rstrip(" ") + "…"
        spans = [(s, e) for s, e in spans if e <= len(text) - 1]
    return text, [chat_pb2.SearchHighlight(start=s, end=e) for s, e in spans]
