"""Transcript text normalisation: spoken-form text for the Piper dataset, and a comparison form for WER.

`normalize_for_tts` turns what Whisper writes ("$250", "in 1999", "21st", "50%", "20°C") into the
words the speaker said, so that the text given to Piper's phonemizer matches the audio. It also
removes what would break the pipe-separated `metadata.csv` (`|`, newlines) and tidies quotes and
whitespace. Numbers are spoken with `num2words` in the transcript's language; symbol words
(and, percent, plus, degrees ...) come from a small table, with English where a language is missing
from it. `normalize_for_wer` lower-cases that form and drops punctuation: two transcripts of the same
speech compare equal however each one wrote its numbers.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from num2words import num2words


@dataclass(frozen=True)
class _Words:
    """Spoken words for symbols in one language."""

    and_: str
    percent: str
    plus: str
    minus: str
    equals: str
    at: str
    degrees: str
    point: str
    currencies: dict[str, tuple[str, str]]  # symbol -> (singular, plural)
    cents: tuple[str, str]
    decimal_comma: bool  # "3,5" is three and a half; "1.000" is a thousand


_EN = _Words(
    and_="and", percent="percent", plus="plus", minus="minus", equals="equals", at="at", degrees="degrees",
    point="point",
    currencies={"$": ("dollar", "dollars"), "€": ("euro", "euros"), "£": ("pound", "pounds"),
                "¥": ("yen", "yen"), "₹": ("rupee", "rupees")},
    cents=("cent", "cents"), decimal_comma=False,
)

_WORDS: dict[str, _Words] = {
    "en": _EN,
    "de": _Words("und", "Prozent", "plus", "minus", "gleich", "at", "Grad", "Komma",
                 {"$": ("Dollar", "Dollar"), "€": ("Euro", "Euro"), "£": ("Pfund", "Pfund")},
                 ("Cent", "Cent"), True),
    "fr": _Words("et", "pour cent", "plus", "moins", "égale", "arobase", "degrés", "virgule",
                 {"$": ("dollar", "dollars"), "€": ("euro", "euros"), "£": ("livre", "livres")},
                 ("centime", "centimes"), True),
    "es": _Words("y", "por ciento", "más", "menos", "igual a", "arroba", "grados", "coma",
                 {"$": ("dólar", "dólares"), "€": ("euro", "euros"), "£": ("libra", "libras")},
                 ("céntimo", "céntimos"), True),
    "it": _Words("e", "per cento", "più", "meno", "uguale", "chiocciola", "gradi", "virgola",
                 {"$": ("dollaro", "dollari"), "€": ("euro", "euro"), "£": ("sterlina", "sterline")},
                 ("centesimo", "centesimi"), True),
    "pt": _Words("e", "por cento", "mais", "menos", "igual a", "arroba", "graus", "vírgula",
                 {"$": ("dólar", "dólares"), "€": ("euro", "euros"), "£": ("libra", "libras")},
                 ("cêntimo", "cêntimos"), True),
    "nl": _Words("en", "procent", "plus", "min", "is", "apenstaartje", "graden", "komma",
                 {"$": ("dollar", "dollar"), "€": ("euro", "euro"), "£": ("pond", "pond")},
                 ("cent", "cent"), True),
}

_SCALES = ("thousand", "million", "billion", "trillion")
_CURRENCY_SYMBOLS = "$€£¥₹"
_MUSIC_SYMBOLS = "♪♫♬♩🎵🎶"
_DROPPED_CHARS = "|*_~^\\`" + _MUSIC_SYMBOLS
_LONG_DIGITS = 16  # longer digit strings (ids, phone numbers) are read digit by digit

_QUOTES = str.maketrans({"‘": "'", "’": "'", "‚": "'", "‛": "'", "′": "'", "`": "'",
                         "“": '"', "”": '"', "„": '"', "‟": '"', "«": '"', "»": '"', "″": '"'})


def _lang(language: str) -> str:
    return (language or "en").split("-")[0].split("_")[0].lower()


def _words_for(language: str) -> _Words:
    return _WORDS.get(_lang(language), _EN)


def _spell(number: Decimal | int, language: str, to: str = "cardinal") -> str:
    """num2words in the language, English where the language is unknown to num2words."""
    try:
        return str(num2words(number, lang=_lang(language), to=to))
    except (NotImplementedError, OverflowError, ValueError, TypeError, KeyError, AttributeError):
        return str(num2words(number, lang="en", to=to))


def _digits_one_by_one(digits: str, language: str) -> str:
    return " ".join(_spell(int(d), language) for d in digits)


def _to_decimal(text: str, words: _Words) -> Decimal | None:
    """A number as written ("1,000.5", or "1.000,5" in decimal-comma languages) -> Decimal."""
    if words.decimal_comma:
        plain = text.replace(".", "").replace(",", ".") if "," in text else _without_thousands(text, ".")
    else:
        plain = text.replace(",", "")
    try:
        return Decimal(plain)
    except InvalidOperation:
        return None


def _without_thousands(text: str, sep: str) -> str:
    if re.fullmatch(rf"\d{{1,3}}(\{sep}\d{{3}})+", text):
        return text.replace(sep, "")
    return text


def _spell_number(text: str, language: str) -> str:
    words = _words_for(language)
    digits_only = text.replace(",", "").replace(".", "")
    if len(digits_only) >= _LONG_DIGITS:
        return _digits_one_by_one(digits_only, language)
    value = _to_decimal(text, words)
    if value is None:
        return text
    decimal_separator = "," if words.decimal_comma else "."
    if value == value.to_integral_value() and decimal_separator not in text:
        return _spell(int(value), language)
    return _spell(value, language)


# ------------------------------------------------------------------------------------------ rules

_NUM = r"\d+(?:[.,]\d+)*"


def _currency(text: str, language: str) -> str:
    words = _words_for(language)
    scale = r"(?:\s+(" + "|".join(_SCALES) + r"))?"
    before = re.compile(rf"([{_CURRENCY_SYMBOLS}])\s?({_NUM}){scale}\b", re.IGNORECASE)
    after = re.compile(rf"(?<![\w.,])({_NUM})\s?([{_CURRENCY_SYMBOLS}])")

    def say(symbol: str, amount: str, scale_word: str | None) -> str:
        singular, plural = words.currencies.get(symbol, _EN.currencies.get(symbol, (symbol, symbol)))
        value = _to_decimal(amount, words)
        if value is None:
            return f"{amount} {plural}"
        if scale_word:
            return f"{_spell_number(amount, language)} {scale_word.lower()} {plural}"
        whole = int(value)
        cents = int(((value - whole) * 100).to_integral_value())
        unit = singular if whole == 1 else plural
        spoken = f"{_spell(whole, language)} {unit}"
        if cents:
            cent_word = words.cents[0] if cents == 1 else words.cents[1]
            spoken += f" {words.and_} {_spell(cents, language)} {cent_word}"
        return spoken

    text = before.sub(lambda m: say(m.group(1), m.group(2), m.group(3)), text)
    text = after.sub(lambda m: say(m.group(2), m.group(1), None), text)
    for _, plural in words.currencies.values():  # "$5 million dollars": the word was already there
        text = re.sub(rf"\b{plural} {plural}\b", plural, text)
    return text


def _percent(text: str, language: str) -> str:
    word = _words_for(language).percent
    return re.sub(rf"({_NUM})\s?%", lambda m: f"{_spell_number(m.group(1), language)} {word}", text)


def _degrees(text: str, language: str) -> str:
    word = _words_for(language).degrees
    scales = {"c": "Celsius", "f": "Fahrenheit", "k": "Kelvin"}

    def say(m: re.Match[str]) -> str:
        unit = m.group(2)
        spoken = f"{_spell_number(m.group(1), language)} {word}"
        return f"{spoken} {scales[unit.lower()]}" if unit else spoken

    text = re.sub(rf"(-?{_NUM})\s?°\s?([CFK])?\b", say, text)
    return text.replace("°", f" {word} ")


def _ordinals(text: str, language: str) -> str:
    if _lang(language) != "en":
        return text
    return re.sub(r"\b(\d+)(st|nd|rd|th)\b", lambda m: _spell(int(m.group(1)), language, "ordinal"),
                  text, flags=re.IGNORECASE)


def _decades(text: str, language: str) -> str:
    if _lang(language) != "en":
        return text

    def say(m: re.Match[str]) -> str:
        spoken = _spell(int(m.group(1)), language, "year")
        return spoken[:-1] + "ies" if spoken.endswith("y") else spoken + "s"

    return re.sub(r"\b(1[1-9]\d0|20\d0)'?s\b", say, text)


def _years(text: str, language: str) -> str:
    if _lang(language) != "en":
        return text
    return re.sub(r"(?<![\d.,$€£-])\b(1[1-9]\d\d|20\d\d)\b(?![.,]\d)",
                  lambda m: _spell(int(m.group(1)), language, "year"), text)


def _times(text: str, language: str) -> str:
    if _lang(language) != "en":
        return text

    def clock(hour: int, minute: int, o_clock: bool) -> str:
        if minute == 0:
            return f"{_spell(hour, language)} o'clock" if o_clock else _spell(hour, language)
        minutes = _spell(minute, language) if minute >= 10 else f"oh {_spell(minute, language)}"
        return f"{_spell(hour, language)} {minutes}"

    def with_meridiem(m: re.Match[str]) -> str:
        spoken = f"{clock(int(m.group(1)), int(m.group(2) or 0), False)} {m.group(3).lower()} m"
        # the abbreviation's final dot stays only where it also ends the sentence
        return spoken + "." if m.group(4) else spoken

    text = re.sub(r"\b(1[0-2]|0?[1-9])(?::([0-5]\d))?\s?([ap])\.?m\b(?:(\.(?=\s*$|\s+(?-i:[A-Z])))|\.)?",
                  with_meridiem, text, flags=re.IGNORECASE)
    return re.sub(r"\b([01]?\d|2[0-3]):([0-5]\d)\b",
                  lambda m: clock(int(m.group(1)), int(m.group(2)), True), text)


def _ranges(text: str, language: str) -> str:
    if _lang(language) != "en":
        return text
    return re.sub(rf"(?<=\d)\s?[-–]\s?(?={_NUM})", " to ", text)


def _negatives(text: str, language: str) -> str:
    word = _words_for(language).minus
    return re.sub(rf"(?<![\w.,])[-−]({_NUM})", lambda m: f"{word} {m.group(1)}", text)


def _plain_numbers(text: str, language: str) -> str:
    return re.sub(rf"(?<![\w]){_NUM}|\d+", lambda m: _spell_number(m.group(0), language), text)


def _symbols(text: str, language: str) -> str:
    words = _words_for(language)
    text = text.replace("&", f" {words.and_} ")
    text = re.sub(r"(?<=\w)\s?\+\s?(?=\w)|(?<!\S)\+(?!\S)|(?<!\S)\+(?=\d)", f" {words.plus} ", text)
    text = re.sub(r"\s=\s", f" {words.equals} ", text)
    text = re.sub(r"(?<=\w)@(?=\w)", f" {words.at} ", text)
    if _lang(language) == "en":
        text = re.sub(r"#\s?(?=\d)", "number ", text)
    return text.replace("%", f" {words.percent} ")


def _clean_characters(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES)
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text)
    text = "".join(" " if c in _DROPPED_CHARS else c for c in text)
    text = re.sub(r"\s[–—]\s|[—]", ", ", text)
    text = text.replace('"', " ")
    # apostrophes: keep inside words (don't) and a plural possessive (dogs'), drop quoting ones
    return re.sub(r"(?<![A-Za-zÀ-ÿ])'|'(?![A-Za-zÀ-ÿ])(?<!s')", " ", text)


def _tidy_spacing(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:!?)\]])", r"\1", text)
    text = re.sub(r"([(\[])\s+", r"\1", text)
    text = re.sub(r",\s*,", ",", text)
    return text.strip(" ,;:")


def normalize_for_tts(text: str, language: str = "en") -> str:
    """The spoken form of a transcript: numbers and symbols as words, safe in a pipe-separated CSV."""
    text = _clean_characters(text)
    for rule in (_currency, _percent, _degrees, _ordinals, _decades, _times, _ranges, _years,
                 _negatives, _symbols, _plain_numbers):
        text = rule(text, language)
    return _tidy_spacing(text)


def normalize_for_wer(text: str, language: str = "en") -> str:
    """Lower-case words without punctuation (numbers spoken), for comparing transcripts."""
    text = normalize_for_tts(text, language).casefold()
    text = re.sub(r"[-‐‑]", " ", text)
    text = text.replace("'", "")
    text = re.sub(r"[^\w\s]|_", " ", text)
    return re.sub(r"\s+", " ", text).strip()
