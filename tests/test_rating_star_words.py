"""A rating written with the language's own word for stars ("5 तारे", "৫ তারা").

Asked how the delivery was, a customer answers with a number and "stars": "5 stars" and
the English word in each script ("5 स्टार") were read, but the languages' own words
("तारे", "তারা", "நட்சத்திரம்", "నక్షత్రాలు", "તારા", "ನಕ್ಷತ್ರ") made the answer no rating:
she was asked again for a number, and a second such answer dropped the question.
"""

from __future__ import annotations

import pytest

from core.dialog.booking import stars_given


@pytest.mark.parametrize("lang,answer,stars", [
    ("hi", "5 तारे", 5), ("hi", "paanch tare", 5), ("mr", "४ तारे", 4), ("bn", "৫ তারা", 5),
    ("ta", "5 நட்சத்திரம்", 5), ("te", "3 నక్షత్రాలు", 3), ("gu", "૫ તારા", 5),
    ("kn", "೪ ನಕ್ಷತ್ರ", 4)])
def test_the_own_word_for_stars_is_read_with_the_number(lang: str, answer: str,
                                                        stars: int) -> None:
    assert stars_given(answer, lang) == stars


def test_the_word_alone_is_no_rating() -> None:
    assert stars_given("तारे", "hi") is None
