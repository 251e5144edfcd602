import sqlite3
import threading

import pytest

from homespun.stores.memory import MemoryStore, fts5_query


@pytest.fixture
def store(tmp_path):
    return MemoryStore(tmp_path / "nested" / "dir" / "memory.db")


def test_creates_parent_dirs_and_uses_wal(tmp_path):
    path = tmp_path / "a" / "b" / "memory.db"
    MemoryStore(path)
    assert path.exists()
    mode = sqlite3.connect(path).execute("pragma journal_mode").fetchone()[0]
    assert mode == "wal"


def test_add_returns_increasing_ids_and_count(store):
    first = store.add("The dentist appointment is on Friday at 3pm", "health")
    second = store.add("My favourite colour is green")
    assert second > first
    assert store.count() == 2


def test_empty_text_is_refused(store):
    with pytest.raises(ValueError, match="empty"):
        store.add("   ")
    assert store.count() == 0


def test_search_finds_by_word_ranks_best_first_and_normalises_tags(store):
    store.add("Anna's birthday is on March 3", "family,  birthdays ,")
    best = store.add("Anna likes tulips; buy tulips for Anna's birthday")
    store.add("The car needs new tyres")
    hits = store.search("what flowers for anna birthday tulips?", limit=5)
    assert [h.id for h in hits][0] == best
    assert len(hits) == 2
    assert hits[0].score >= hits[1].score
    assert hits[1].tags == "family, birthdays"
    assert hits[0].created_at.endswith("+00:00")


def test_search_matches_word_forms(store):
    store.add("Team meetings are on Mondays")
    assert [h.text for h in store.search("meeting", limit=5)] == ["Team meetings are on Mondays"]


def test_search_respects_limit(store):
    for i in range(8):
        store.add(f"note number {i} about groceries")
    assert len(store.search("groceries", limit=3)) == 3


@pytest.mark.parametrize(
    "query",
    [
        '"unbalanced',
        "AND OR NOT",
        "col:value",
        "prefix*",
        "NEAR(a b)",
        "(",
        "-x",
        "^start",
        "'; drop table memories; --",
    ],
)
def test_search_survives_fts5_syntax_in_queries(store, query):
    store.add("something unrelated")
    assert store.search(query, limit=5) == []
    assert store.count() == 1


def test_fts5_query_quotes_and_ors_words_and_drops_stopwords():
    assert fts5_query('What is my "dentist" appointment?') == '"dentist" OR "appointment"'
    assert fts5_query("what is it") == '"what" OR "is" OR "it"'
    assert fts5_query("?!") == ""


def test_all_lists_newest_first(store):
    ids = [store.add(f"memory {i}") for i in range(4)]
    listed = store.all(limit=2)
    assert [h.id for h in listed] == [ids[3], ids[2]]
    assert all(h.score is None for h in listed)
    assert len(store.all()) == 4


def test_persists_across_instances(tmp_path):
    path = tmp_path / "memory.db"
    MemoryStore(path).add("Passport expires in 2031", "documents")
    hits = MemoryStore(path).search("passport", limit=1)
    assert [(h.text, h.tags) for h in hits] == [("Passport expires in 2031", "documents")]


def test_usable_from_several_threads(store):
    errors = []

    def worker(n):
        try:
            for i in range(5):
                store.add(f"thread {n} item {i}")
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count() == 20


def test_bad_limit_is_refused(store):
    with pytest.raises(ValueError):
        store.search("x", limit=0)
