from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ttsft_daemon.text.textnorm import normalize_for_tts, normalize_for_wer


@pytest.mark.parametrize(
    ("written", "spoken"),
    [
        ("I have 3 cats.", "I have three cats."),
        ("There were 1,000,000 people.", "There were one million people."),
        ("It is 3.14 wide.", "It is three point one four wide."),
        ("In 1999, we met.", "In nineteen ninety-nine, we met."),
        ("It was built in 1887.", "It was built in eighteen eighty-seven."),
        ("Since 2005.", "Since two thousand and five."),
        ("Music of the 1990s.", "Music of the nineteen nineties."),
        ("The 21st century.", "The twenty-first century."),
        ("He came 2nd, she came 3rd.", "He came second, she came third."),
        ("It costs $250.", "It costs two hundred and fifty dollars."),
        ("It costs $1.", "It costs one dollar."),
        ("Only $5.50 today.", "Only five dollars and fifty cents today."),
        ("A $2 million deal.", "A two million dollars deal."),
        ("It was 5€ or £3.", "It was five euros or three pounds."),
        ("Half is 50%.", "Half is fifty percent."),
        ("It's 20°C outside.", "It's twenty degrees Celsius outside."),
        ("Set it to 350 °F.", "Set it to three hundred and fifty degrees Fahrenheit."),
        ("It is -5 now.", "It is minus five now."),
        ("R&D costs.", "R and D costs."),
        ("Two + two.", "Two plus two."),
        ("We meet at 5:30 pm.", "We meet at five thirty p m."),
        ("Up at 7:05 a.m. and off.", "Up at seven oh five a m and off."),
        ("Come at 5pm! It is 12:00.", "Come at five p m! It is twelve o'clock."),
        ("I am here.", "I am here."),
        ("Read pages 5-10.", "Read pages five to ten."),
        ("Our #1 song.", "Our number one song."),
    ],
)
def test_numbers_and_symbols_are_spoken_as_words(written: str, spoken: str) -> None:
    assert normalize_for_tts(written) == spoken


def test_pipes_newlines_and_curly_quotes_are_cleaned() -> None:
    text = "He said “hello” |\tand\r\nthen ‘left’ — quickly."
    out = normalize_for_tts(text)
    assert out == "He said hello and then left, quickly."
    assert "|" not in out and "\n" not in out and "\r" not in out


def test_apostrophes_inside_words_are_kept() -> None:
    assert normalize_for_tts("Don't touch the dogs' toys.") == "Don't touch the dogs' toys."


def test_music_symbols_and_markup_characters_are_removed() -> None:
    assert normalize_for_tts("♪ la *la* ♪") == "la la"


def test_whitespace_is_collapsed_around_punctuation() -> None:
    assert normalize_for_tts("  Well ,   here   we go .  ") == "Well, here we go."


def test_very_long_digit_strings_are_read_digit_by_digit() -> None:
    out = normalize_for_tts("Code 12345678901234567.")
    assert out.startswith("Code one two three four five")
    assert "quadrillion" not in out


def test_other_languages_use_their_own_number_words() -> None:
    assert normalize_for_tts("Es kostet 5,50 € für 3 Leute.", "de") == (
        "Es kostet fünf Euro und fünfzig Cent für drei Leute."
    )
    assert normalize_for_tts("Il y a 21 chats et 10 % de chiens.", "fr") == (
        "Il y a vingt et un chats et dix pour cent de chiens."
    )


def test_unknown_language_falls_back_to_english_numbers() -> None:
    assert normalize_for_tts("5 things", "xx") == "five things"


def test_wer_form_is_lowercase_without_punctuation() -> None:
    assert normalize_for_wer("Hello, World! It's 5 o'clock.") == "hello world its five oclock"
    assert normalize_for_wer("Twenty-one... (maybe)") == "twenty one maybe"


def test_wer_form_equates_digits_and_words() -> None:
    assert normalize_for_wer("We counted 42 stars.") == normalize_for_wer("We counted forty two stars")
    assert normalize_for_wer("Since 1999!") == normalize_for_wer("since nineteen ninety-nine")
    assert normalize_for_wer("$250") == normalize_for_wer("two hundred and fifty dollars")


def test_empty_and_symbol_only_text() -> None:
    assert normalize_for_tts("") == ""
    assert normalize_for_tts(" | \n ") == ""
    assert normalize_for_wer("...") == ""


@given(st.text(max_size=200))
def test_tts_form_is_always_safe_for_a_pipe_separated_csv(text: str) -> None:
    out = normalize_for_tts(text)
    assert "|" not in out
    assert "\n" not in out and "\r" not in out
    assert out == out.strip()
    assert "  " not in out


@given(st.text(max_size=200))
def test_wer_form_is_idempotent(text: str) -> None:
    once = normalize_for_wer(text)
    assert normalize_for_wer(once) == once
