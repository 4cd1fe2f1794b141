from __future__ import annotations

from appliance.conversation.sentences import SentenceSplitter
from appliance.conversation.tags import extract_tags
from appliance.turns import Tag


def split_stream(text: str, step: int = 3) -> list[str]:
    splitter = SentenceSplitter()
    out: list[str] = []
    for i in range(0, len(text), step):
        out += splitter.feed(text[i : i + step])
    return out + splitter.flush()


def test_english_sentences_arrive_as_soon_as_complete() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("It costs 3.5 dollars, e.g. at the") == []
    assert splitter.feed(" shop. Next") == ["It costs 3.5 dollars, e.g. at the shop."]
    assert splitter.flush() == ["Next"]


def test_japanese_sentences_split_without_spaces() -> None:
    assert split_stream("こんにちは、元気ですか？今日はいい天気ですね。散歩しましょう！") == [
        "こんにちは、元気ですか？",
        "今日はいい天気ですね。",
        "散歩しましょう！",
    ]


def test_short_fragments_join_the_next_sentence() -> None:
    assert split_stream("Hi. How are you today? Fine.") == ["Hi. How are you today?", "Fine."]


def test_a_tag_is_never_cut() -> None:
    assert split_stream('[face:joy]Wow! <face name="sad" duration="2"/>Oh no. Really?', step=2) == [
        "[face:joy]Wow!",
        '<face name="sad" duration="2"/>Oh no. Really?',
    ]


def test_newlines_end_sentences() -> None:
    assert split_stream("first line\nsecond line") == ["first line", "second line"]


def test_extract_tags_both_forms_in_order() -> None:
    text, tags = extract_tags('[face:joy] Hello <animation name="wave" duration="1.5"/> there [lang:en]!')
    assert text == "Hello there!"
    assert tags == (
        Tag("face", "joy"),
        Tag("animation", "wave", (("duration", "1.5"),)),
        Tag("lang", "en"),
    )
    assert tags[1].attribute("duration") == "1.5"


def test_text_without_tags_is_untouched() -> None:
    assert extract_tags("Plain [not a tag] text.") == ("Plain [not a tag] text.", ())


def test_a_period_at_the_end_of_a_delta_ends_the_sentence_without_waiting() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("It is nine o'clock.") == ["It is nine o'clock."]
    assert splitter.feed(" The price is 3.") == []  # a number: "3.5" may follow
    assert splitter.feed("5 dollars, see Dr.") == []  # an abbreviation
    assert splitter.feed(" Smith...") == []  # an ellipsis may go on
    assert splitter.feed(" Bye now.") == ["The price is 3.5 dollars, see Dr. Smith...", "Bye now."]
