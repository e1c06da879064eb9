"""ChatService.SearchMessages over real gRPC and PostgreSQL: stemmed full-text search, ranking,
snippets with highlights, web-search syntax, filters, pagination and ownership."""

from __future__ import annotations

import pytest
from google.protobuf import field_mask_pb2

from qdata.v1 import chat_pb2
from tests.support.calls import case_id, create_user, expect_error, rid
from tests.support.chat import ASSISTANT, NOT_FOUND, SYSTEM, USER, append, create_session, message, violations


async def search(api, user_id: str, query: str, **fields) -> chat_pb2.SearchMessagesResponse:
    return await api.chat.SearchMessages(chat_pb2.SearchMessagesRequest(user_id=user_id, query=query, **fields))


def highlighted(hit: chat_pb2.SearchHit) -> list[str]:
    return [hit.snippet[h.start : h.end] for h in hit.highlights]


def hits_of(reply) -> list[tuple[str, int]]:
    return [(h.session_id, h.sequence_number) for h in reply.hits]


async def test_search_finds_stemmed_words_ranked_with_snippets(api):
    user = await create_user(api)
    trips = await create_session(api, user.id, title="Trips")
    cooking = await create_session(api, user.id, title="Cooking")
    await append(
        api,
        trips,
        message("Which trains run from Lisbon to Porto?"),
        message("Several trains run daily; the fastest train takes under three hours.", ASSISTANT),
        message("Is the museum open on Mondays?"),
    )
    await append(api, cooking, message("How long do I boil an egg? Boiling eggs is hard."))

    reply = await search(api, user.id, "train")
    assert [(h.session_id, h.sequence_number) for h in reply.hits] == [(trips.id, 2), (trips.id, 1)]
    best, second = reply.hits
    assert best.score > second.score > 0  # three matches rank above one
    assert (best.session_title, best.role) == ("Trips", ASSISTANT)
    assert second.role == USER and second.create_time.seconds > 0
    assert highlighted(best) == ["trains", "train"]  # stemmed: "trains" matches "train"
    assert "Several trains run daily" in best.snippet
    assert highlighted(second) == ["trains"] and second.snippet == "Which trains run from Lisbon to Porto?"
    assert not reply.next_page_token

    # "boiled" finds "boil" and "Boiling"; "eggs" finds "egg".
    [egg] = (await search(api, user.id, "boiled eggs")).hits
    assert egg.session_id == cooking.id and highlighted(egg) == ["boil", "egg", "Boiling", "eggs"]

    # Web-search syntax: phrases, "or", exclusion.
    assert hits_of(await search(api, user.id, '"trains run daily"')) == [(trips.id, 2)]
    assert hits_of(await search(api, user.id, '"run daily trains"')) == []
    assert set(hits_of(await search(api, user.id, "museum or egg"))) == {(trips.id, 3), (cooking.id, 1)}
    assert hits_of(await search(api, user.id, "train -fastest")) == [(trips.id, 1)]
    # Only stop words: no hits, no error. Words not present: no hits.
    assert hits_of(await search(api, user.id, "the and of")) == []
    assert hits_of(await search(api, user.id, "zeppelin")) == []
    # Filters: one session, some roles.
    assert hits_of(await search(api, user.id, "train", roles=[ASSISTANT])) == [(trips.id, 2)]
    assert hits_of(await search(api, user.id, "train", roles=[SYSTEM])) == []
    assert hits_of(await search(api, user.id, "egg or train", session_id=cooking.id)) == [(cooking.id, 1)]


async def test_search_respects_ownership_deletion_and_archiving(api):
    alice = await create_user(api)
    bob = await create_user(api)
    mine = await create_session(api, alice.id)
    theirs = await create_session(api, bob.id)
    await append(api, mine, "the secret password is swordfish")
    await append(api, theirs, "bob also says swordfish", "swordfish again")

    assert hits_of(await search(api, alice.id, "swordfish")) == [(mine.id, 1)]
    assert len((await search(api, bob.id, "swordfish")).hits) == 2
    # Another user's session is NOT_FOUND, exactly like a missing one.
    await expect_error(search(api, alice.id, "swordfish", session_id=theirs.id), NOT_FOUND, "SESSION_NOT_FOUND")
    await expect_error(search(api, alice.id, "swordfish", session_id=rid()), NOT_FOUND, "SESSION_NOT_FOUND")
    await expect_error(search(api, rid(), "swordfish"), NOT_FOUND, "USER_NOT_FOUND")

    # Archived sessions are searched; deleted messages are not.
    await api.chat.UpdateSession(
        chat_pb2.UpdateSessionRequest(
            request_id=rid(),
            session=chat_pb2.Session(id=theirs.id, user_id=bob.id, archived=True),
            update_mask=field_mask_pb2.FieldMask(paths=["archived"]),
        )
    )
    await api.chat.DeleteMessage(
        chat_pb2.DeleteMessageRequest(request_id=rid(), user_id=bob.id, session_id=theirs.id, sequence_number=1)
    )
    assert hits_of(await search(api, bob.id, "swordfish")) == [(theirs.id, 2)]


async def test_search_pages_and_snippet_limits(api):
    user = await create_user(api)
    session = await create_session(api, user.id)
    await append(api, session, *[f"note {i}: remember the milk" for i in range(45)])
    # A long message: the snippet is an excerpt around the match, at most about 300 characters,
    # and the marker characters the server uses internally cannot be forged.
    filler = "lorem ipsum dolor sit amet " * 400
    await append(api, session, filler + "\ue000the hidden\ue001 treasure map\n\n is here " + filler)

    pages, token = [], ""
    while True:
        reply = await search(api, user.id, "milk", page_size=20, page_token=token)
        pages.append([h.sequence_number for h in reply.hits])
        token = reply.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [20, 20, 5]
    assert sorted(n for p in pages for n in p) == list(range(1, 46))
    # Equal scores: newest first, then the highest number.
    assert pages[0][0] == 45
    assert len((await search(api, user.id, "milk")).hits) == 20  # default page size
    assert len((await search(api, user.id, "milk", page_size=1000)).hits) == 45  # capped at 100

    [hit] = (await search(api, user.id, "treasure")).hits
    assert len(hit.snippet) <= 301 and "lorem" in hit.snippet
    assert "the hidden treasure map is here" in hit.snippet
    assert "\ue000" not in hit.snippet and "\ue001" not in hit.snippet and "\n" not in hit.snippet
    assert highlighted(hit) == ["treasure"]

    # Tokens are bound to the query and filters.
    first = await search(api, user.id, "milk", page_size=5)
    for other in ({"query": "remember"}, {"roles": [USER]}, {"session_id": session.id}):
        fields = {"query": "milk", "page_token": first.next_page_token, **other}
        request = chat_pb2.SearchMessagesRequest(user_id=user.id, **fields)
        assert await violations(api.chat.SearchMessages(request)) == {"page_token"}, other


async def test_search_snippets_keep_markup_and_code_as_plain_text(api):
    user = await create_user(api)
    session = await create_session(api, user.id)
    html = "use <b>bold</b> & markup"
    code = "fn parse(items: Vec<String>) -> Option<&str> { if a<b && c>d { first(items) } } <!-- note -->"
    await append(api, session, html, code)

    # A message this short is its own snippet, whichever of its words matched.
    for query, words in (("markup", ["markup"]), ("bold", ["bold"]), ("use bold", ["use", "bold"])):
        [hit] = (await search(api, user.id, query)).hits
        assert hit.snippet == html
        assert highlighted(hit) == words
    [hit] = (await search(api, user.id, "parse items")).hits
    assert hit.snippet == code
    assert highlighted(hit) == ["parse", "items", "items"]
    # An excerpt of a long message keeps its markup too.
    filler = "lorem ipsum dolor sit amet " * 40
    await append(api, session, filler + "the <em>treasure</em> <a href='#map'>map</a> " + filler)
    [hit] = (await search(api, user.id, "treasure")).hits
    assert "the <em>treasure</em> <a href='#map'>map</a> lorem" in hit.snippet and len(hit.snippet) <= 301
    assert highlighted(hit) == ["treasure"]

    # The stand-in the server gives ts_headline for "<" cannot be forged either: content holding
    # it (or the match markers) shows none of them, and no "<" where the content had none.
    await append(api, session, "a \ue002script> tag \ue000and\ue001 a forged widget")
    [hit] = (await search(api, user.id, "widget")).hits
    assert hit.snippet == "a script> tag and a forged widget"
    assert highlighted(hit) == ["widget"]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"query": ""}, {"query"}),
        ({"query": "   "}, {"query"}),
        ({"query": "q" * 501}, {"query"}),
        ({"query": "nul\x00"}, {"query"}),
        ({"query": "ok", "page_size": -1}, {"page_size"}),
        ({"query": "ok", "roles": [chat_pb2.MESSAGE_ROLE_UNSPECIFIED]}, {"roles[0]"}),
        ({"query": "ok", "roles": [USER, 12]}, {"roles[1]"}),
        ({"query": "ok", "session_id": "nope"}, {"session_id"}),
        ({"query": "ok", "page_token": "forged"}, {"page_token"}),
        ({"query": "", "user_id": ""}, {"query", "user_id"}),
    ],
    ids=case_id,
)
async def test_search_rejects_bad_input(api, fields, expected):
    user = await create_user(api)
    request = chat_pb2.SearchMessagesRequest(user_id=user.id)
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(request, key).extend(value)
        else:
            setattr(request, key, value)
    assert await violations(api.chat.SearchMessages(request)) == expected


@pytest.mark.parametrize(
    "query", ["'; DROP TABLE chat_messages; --", "%(user_id)s", "a & b | !c <-> d:*", '"unbalanced', "-", "or"]
)
async def test_search_takes_hostile_but_valid_queries_as_words(api, query):
    user = await create_user(api)
    assert (await search(api, user.id, query)).hits == []
