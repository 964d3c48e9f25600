"""Session 38 (review rsms): a rider's own word for "status" in his language.

"நிலை" (Tamil) and "অবস্থা" (Bengali), their languages' word for a job's state, were "not
understood", though the English word in their script and their words for help and
earnings work; so were the Marathi, Telugu, Gujarati and Kannada ones.
"""

from __future__ import annotations

import pytest

from core.domain.dispatch import Kind, parse_command


@pytest.mark.parametrize("text", ["नमस्ते स्थिती", "स्थिती", "অবস্থা", "நிலை", "స్థితి",
                                  "સ્થિતિ", "ಸ್ಥಿತಿ", "நிலை?", "job 4 நிலை"])
def test_the_word_for_state_asks_status(text):
    assert parse_command(text).kind is Kind.STATUS


@pytest.mark.parametrize("text", ["ரத்து", "বাতিল", "உதவி", "সাহায্য"])
def test_other_commands_keep_their_reading(text):
    assert parse_command(text).kind is not Kind.STATUS
