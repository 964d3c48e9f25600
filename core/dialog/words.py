"""What a user's few words mean: digits in any script, number words, yes/no, commands.

Pure functions over text, shared by every channel (WhatsApp text, IVR keypad digits).
"""

from __future__ import annotations

import re
import unicodedata

from core.domain.dispatch import NEGATORS as PARTNER_NEGATORS
from core.domain.dispatch import NO_PROBLEM, Kind
from core.domain.dispatch import WORDS as PARTNER_WORDS
from core.domain.text import visible, without_format_marks  # noqa: F401 (words.visible)

# Script ranges used to guess a first-time user's language from what they typed.
_SCRIPTS: tuple[tuple[int, int, str], ...] = (
    (0x0900, 0x097F, "hi"),  # Devanagari (Hindi; Marathi users confirm or pick theirs)
    (0x0980, 0x09FF, "bn"),
    (0x0A80, 0x0AFF, "gu"),
    (0x0B80, 0x0BFF, "ta"),
    (0x0C00, 0x0C7F, "te"),
    (0x0C80, 0x0CFF, "kn"),
)

# Number words, per language: romanized as typed on phones, then the language's script.
# A word found in two languages must mean the same number (a test checks).
NUMBERS_BY_LANGUAGE: dict[str, dict[str, int]] = {
    "hi": {"ek": 1, "do": 2, "doo": 2, "teen": 3, "tin": 3, "char": 4, "chaar": 4, "panch": 5,
           "paanch": 5, "pach": 5, "chhe": 6, "che": 6, "chah": 6, "saat": 7, "sat": 7,
           "aath": 8, "ath": 8, "nau": 9,
           "शून्य": 0, "एक": 1, "दो": 2, "तीन": 3, "चार": 4, "पांच": 5, "पाँच": 5, "छह": 6,
           "छः": 6, "सात": 7, "आठ": 8, "नौ": 9},
    "en": {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
           "seven": 7, "eight": 8, "nine": 9},
    "bn": {"ek": 1, "dui": 2, "tin": 3, "char": 4, "panch": 5, "chhoy": 6, "choy": 6,
           "sat": 7, "aat": 8, "noy": 9,
           "শূন্য": 0, "এক": 1, "দুই": 2, "তিন": 3, "চার": 4, "পাঁচ": 5, "ছয়": 6,
           "সাত": 7, "আট": 8, "নয়": 9},
    "mr": {"ek": 1, "don": 2, "teen": 3, "char": 4, "pach": 5, "paach": 5, "saha": 6,
           "saat": 7, "aath": 8, "nau": 9,
           "शून्य": 0, "एक": 1, "दोन": 2, "तीन": 3, "चार": 4, "पाच": 5, "सहा": 6, "सात": 7,
           "आठ": 8, "नऊ": 9},
    "ta": {"onnu": 1, "ondru": 1, "onru": 1, "rendu": 2, "irandu": 2, "moonu": 3,
           "moondru": 3, "naalu": 4, "nalu": 4, "naangu": 4, "anju": 5, "ainthu": 5,
           "aaru": 6, "ezhu": 7, "ettu": 8, "onbathu": 9, "onbadhu": 9,
           "பூஜ்யம்": 0, "ஒன்று": 1, "ஒன்னு": 1, "இரண்டு": 2, "ரெண்டு": 2, "மூன்று": 3,
           "மூணு": 3, "நான்கு": 4, "நாலு": 4, "ஐந்து": 5, "அஞ்சு": 5, "ஆறு": 6, "ஏழு": 7,
           "எட்டு": 8, "ஒன்பது": 9},
    "te": {"okati": 1, "rendu": 2, "moodu": 3, "mudu": 3, "naalugu": 4, "nalugu": 4,
           "aidu": 5, "aaru": 6, "edu": 7, "enimidi": 8, "tommidi": 9, "thommidi": 9,
           "సున్నా": 0, "ఒకటి": 1, "రెండు": 2, "మూడు": 3, "నాలుగు": 4, "ఐదు": 5, "ఆరు": 6,
           "ఏడు": 7, "ఎనిమిది": 8, "తొమ్మిది": 9},
    "gu": {"ek": 1, "be": 2, "tran": 3, "char": 4, "panch": 5, "chha": 6, "saat": 7,
           "aath": 8, "nav": 9,
           "શૂન્ય": 0, "એક": 1, "બે": 2, "ત્રણ": 3, "ચાર": 4, "પાંચ": 5, "છ": 6, "સાત": 7,
           "આઠ": 8, "નવ": 9},
    "kn": {"ondu": 1, "eradu": 2, "mooru": 3, "muru": 3, "naalku": 4, "nalku": 4,
           "aidu": 5, "aaru": 6, "elu": 7, "entu": 8, "ombattu": 9, "ombhattu": 9,
           "ಸೊನ್ನೆ": 0, "ಒಂದು": 1, "ಎರಡು": 2, "ಮೂರು": 3, "ನಾಲ್ಕು": 4, "ಐದು": 5, "ಆರು": 6,
           "ಏಳು": 7, "ಎಂಟು": 8, "ಒಂಬತ್ತು": 9},
}
NUMBER_WORDS: dict[str, int] = {
    word: n for table in NUMBERS_BY_LANGUAGE.values() for word, n in table.items()
}

# Each line: one language, romanized then its script (Hindi and English first).
YES_WORDS = frozenset({
    "yes", "y", "yeah", "yep", "ok", "okay", "haan", "haa", "han", "ha", "hn", "haanji", "ji",
    "haan ji", "han ji", "ha ji", "haa ji", "hanji", "theek", "thik", "theek hai", "thik hai",
    "sahi", "sahi hai", "हाँ", "हां", "हा", "जी", "हाँ जी", "हां जी", "हा जी", "ठीक", "ठीक है",
    "सही", "सही है", "ओके", "accepted",
    "hya", "hyan", "হ্যাঁ", "হ্যা", "হাঁ", "হা", "ঠিক আছে", "ওকে",  # bn
    "hoy", "ho", "होय", "हो", "ठीक आहे", "बरं",  # mr
    "aama", "aamam", "amam", "sari", "ஆம்", "ஆமா", "ஆமாம்", "சரி", "ஓகே",  # ta
    "aamanga", "ஆமாங்க", "சரிங்க",  # ta, politely
    "avunu", "avnu", "sare", "అవును", "ఔను", "సరే", "ఓకే",  # te
    "avunandi", "sarenandi", "అవునండి", "సరేనండి",  # te, politely
    "haji", "હા", "હાજી", "બરાબર", "ઠીક છે", "ઓકે", "હા જી", "હાં", "હાં જી",  # gu
    "houdu", "haudu", "hawdu", "howdu", "ಹೌದು", "ಸರಿ", "ಆಯ್ತು", "aytu", "ಓಕೆ",  # kn
    "👍",  # a thumbs-up, any skin tone (clean drops the tone): "ok" is yes too
    # The partner SMS parser's yes words are the chat's too (core.domain.dispatch,
    # Kind.ACCEPT: "ঠিক", "ઠીક", "यस", "aamaam"), but its commands for an offer ("take",
    # "accept", Marathi's "घ्यायचं": I will take it), no answer to the chat's questions.
}) | (PARTNER_WORDS[Kind.ACCEPT] - {"take", "accept", "घ्यायचं", "घ्यायचे", "घ्यायचा",
                                    "ghyaycha"})
NO_WORDS = frozenset({
    "no", "n", "nope", "nahi", "nahin", "nai", "na", "naa", "नहीं", "नही", "ना",
    "না", "নাহ", "নাই",  # bn
    "nako", "नको", "नाही",  # mr
    "illa", "illai", "vendam", "இல்லை", "இல்ல", "வேண்டாம்",  # ta
    "illinga", "illeenga", "இல்லீங்க", "இல்லைங்க", "வேண்டாங்க",  # ta, politely
    "ledu", "ledhu", "vaddu", "kaadu", "kadu", "లేదు", "వద్దు", "కాదు",  # te
    "ledandi", "ledhandi", "kaadandi", "లేదండి", "కాదండి", "వద్దండి",  # te, politely
    "nathi", "ના", "નથી", "નહીં", "નહિ", "ના જી",  # gu
    "beda", "bedaa", "ಇಲ್ಲ", "ಬೇಡ", "ಬೇಡಾ",  # kn (illa: as in Tamil)
    # The partner SMS parser's refusals are the chat's too, one list (core.domain.dispatch,
    # Kind.DECLINE): "nhi", "ji nahi", and the one-word refusals of each language, the
    # negated verbs as people text them ("முடியாது" cannot, "వద్దండి", "కుదరదు" not
    # possible, "ಆಗಲ್ಲ", "ಬೇಡಾ", "পারবনা", "লাগবেনা" not needed, "চাইনা" I do not want).
}) | PARTNER_WORDS[Kind.DECLINE]
MENU_WORDS = frozenset({
    "0", "menu", "main menu", "menyu", "मेनू", "मेन्यू", "मेन्यु", "मेनु",  # hi, mr
    "মেনু", "মেন্যু", "மெனு", "மெனூ", "మెనూ", "మెను", "મેનુ", "મેનૂ", "ಮೆನು", "ಮೆನ್ಯು",
})
HELP_WORDS = frozenset({
    "help", "help me", "?", "madad", "sahayata", "मदद", "सहायता",
    "সাহায্য",  # bn
    "madat", "मदत",  # mr
    "udhavi", "uthavi", "உதவி",  # ta
    "sahayam", "sayam", "సహాయం", "సాయం",  # te
    "મદદ",  # gu
    "sahaya", "ಸಹಾಯ",  # kn
})
LANGUAGE_WORDS = frozenset({"language", "lang", "bhasha", "bhasa", "भाषा", "ভাষা", "மொழி",
                            "భాష", "ભાષા", "ಭಾಷೆ"})
# STOP opts the user out of every message: only words that mean "stop (the messages)",
# never a bare no (na, nahi, illa...), which answers questions.
STOP_WORDS = frozenset({
    "stop", "stopall", "unsubscribe", "cancel messages",
    "बंद", "band", "bandh", "बन्द", "बंद करो", "band karo", "bandh karo", "मैसेज बंद करो",
    "message band karo", "messages band karo",  # hi
    "বন্ধ", "বন্ধ করো", "বন্ধ করুন", "bondho", "bondho koro",  # bn
    "थांबवा", "बंद करा", "thambva", "band kara",  # mr
    "நிறுத்து", "நிறுத்துங்கள்", "niruthu", "nirutthu",  # ta
    "ఆపు", "ఆపండి", "aapu", "aapandi",  # te
    "બંધ", "બંધ કરો",  # gu
    "ನಿಲ್ಲಿಸಿ", "ನಿಲ್ಲಿಸು", "nillisi",  # kn
})
# The STOP words that also mean "closed" (a shop, a road): a bare one answers "open or
# closed?". While an operator talks with her it goes to them (conversation); "band karo",
# "STOP" still stop.
CLOSED_WORDS = frozenset({"बंद", "band", "bandh", "बन्द", "বন্ধ", "bondho", "બંધ"})
START_WORDS = frozenset({
    "start", "unstop", "शुरू", "shuru", "chalu", "चालू",
    "শুরু", "shuru koro",  # bn
    "सुरू", "suru",  # mr
    "தொடங்கு", "thodangu",  # ta
    "మొదలు", "ప్రారంభం", "modalu",  # te
    "શરૂ", "ચાલુ",  # gu
    "ಶುರು", "ಪ್ರಾರಂಭ",  # kn
})
# "There is none", as people answer "is there a landmark?" (a bare no is one too).
SKIP_WORDS = NO_WORDS | {
    "skip", "-", "none", "nothing", "nil", "no landmark", "not there",
    "nahi hai", "nahin hai", "nai hai", "na hai", "kuch nahi", "kuch nahi hai", "koi nahi",
    "koi nahi hai", "kuchh nahi", "नहीं है", "नही है", "कुछ नहीं", "कुछ नहीं है", "कोई नहीं",
    "कोई नहीं है", "कुछ नही",  # hi
    "nei", "kichu nei", "কিছু নেই", "নেই", "কিছু না", "কোনো নেই", "কিছুই নেই",  # bn
    "nahi aahe", "kahi nahi", "काही नाही", "नाही आहे", "कोणी नाही",  # mr
    "ethuvum illai", "onnum illai", "onnum illa", "எதுவும் இல்லை", "ஒன்றும் இல்லை",
    "ஒண்ணும் இல்லை",  # ta
    "emi ledu", "emee ledu", "ఏమీ లేదు", "ఏం లేదు",  # te
    "kai nathi", "kashu nathi", "કંઈ નથી", "કશું નથી", "કાંઈ નથી",  # gu
    "enu illa", "yenu illa", "ಏನೂ ಇಲ್ಲ", "ಯಾವುದೂ ಇಲ್ಲ",  # kn
}
# "Back": the previous question again (a bare word or two; "mandir ke peeche" is a
# landmark, "peeche" alone is not).
BACK_WORDS = frozenset({
    "back", "go back", "previous", "undo",
    "peeche", "piche", "peechhe", "pichhe", "peeche jao", "piche jao", "wapas", "vapas",
    "wapis", "vapis", "wapas jao", "vapas jao", "पीछे", "पीछे जाओ", "वापस", "वापस जाओ",  # hi
    "pichone", "pichhone", "fire jao", "phire jao", "পিছনে", "পেছনে", "ফিরে যাও",  # bn
    "mage", "maage", "mage ja", "मागे", "मागे जा", "परत",  # mr
    "pinnal", "pinnadi", "பின்னால்", "பின்னாடி", "பின் செல்",  # ta
    "venakki", "venaka", "వెనక్కి", "వెనుకకు", "వెనక్కు",  # te
    "pachhal", "pachal", "પાછળ", "પાછા", "પાછા જાઓ",  # gu
    "hinde", "hindakke", "ಹಿಂದೆ", "ಹಿಂದಕ್ಕೆ", "ಹಿಂದೆ ಹೋಗಿ",  # kn
})

# Thanks, as people write it after a booking or a status ("dhanyavad", "thank you ji",
# "🙏"): no question asked, nothing to miss.
THANK_WORDS = frozenset({
    "thanks", "thank", "thanku", "thankyou", "thnx", "thx", "tnx", "ty", "tq", "🙏",
    "dhanyavad", "dhanyawad", "dhanyavaad", "dhanyabad", "shukriya", "shukria",
    "धन्यवाद", "शुक्रिया", "आभार",  # hi, mr
    "ধন্যবাদ", "dhonnobad", "dhonyobad",  # bn
    "आभारी",  # mr
    "நன்றி", "nandri", "nanri",  # ta
    "ధన్యవాదాలు", "ధన్యవాదం", "dhanyavadalu",  # te
    "આભાર", "ધન્યવાદ", "aabhar", "abhar",  # gu
    "ಧನ್ಯವಾದ", "ಧನ್ಯವಾದಗಳು", "dhanyavadagalu",  # kn
})
# Words that go with an ok or a thanks and change nothing ("thank you so much ji").
_POLITE = frozenset({
    "ji", "sir", "madam", "mam", "bhai", "bhaiya", "you", "u", "so", "very", "much", "a",
    "lot", "hai", "bahut", "bohot", "romba", "जी", "सर", "है", "बहुत", "खूप", "ரொம்ப",
    "చాలా", "ખૂબ", "ತುಂಬಾ", "অনেক",
    # sir and madam as each script spells them ("ಬೇಡ ಸರ್", "சரி சார்")
    "sar", "saar", "मैडम", "স্যার", "ম্যাডাম", "சார்", "மேடம்", "సార్", "మేడం", "સર",
    "મેડમ", "ಸರ್", "ಮೇಡಂ"})

# "No, (an)other village", "galat gaon hai": the village or office chosen is not the one.
# Other or wrong, romanized and in each script...
_OTHER = frozenset({
    "other", "another", "different", "wrong", "dusra", "doosra", "dusri", "doosri", "dusre",
    "doosre", "galat", "galath", "ghalat", "alag", "दूसरा", "दूसरी", "दूसरे", "दुसरा",
    "गलत", "ग़लत", "अलग",  # hi
    "অন্য", "ভুল", "onno", "bhul",  # bn
    "दुसरे", "दुसरं", "दुसरी", "चुकीचे", "चुकीचा", "चुकीचं", "chukicha",  # mr
    "வேற", "வேறு", "தப்பு", "தவறு", "thappu", "veru",  # ta
    "వేరే", "తప్పు", "vere", "tappu",  # te
    "બીજું", "બીજુ", "બીજા", "બીજો", "ખોટું", "ખોટુ", "ખોટા", "khotu",  # gu
    "ಬೇರೆ", "ತಪ್ಪು", "bere",  # kn
})
# ... the place (village, post office, pincode) and the small words around them.
_PLACE = frozenset({
    "village", "place", "office", "post", "po", "pin", "pincode", "one", "gaon", "gaanv",
    "gav", "gaav", "gao", "jagah", "jaga", "wala", "vala", "hai", "ye", "yeh", "yah",
    "it", "is", "its", "it's", "this", "the", "a", "an", "ka", "ki", "ke",
    "गाँव", "गांव", "गाव", "जगह", "पिनकोड", "वाला", "है", "ये", "यह", "का", "की",  # hi
    "গ্রাম", "gram", "জায়গা", "আছে", "এটা",  # bn
    "ठिकाण", "आहे", "हे",  # mr
    "ஊர்", "ஊரு", "கிராமம்", "ooru", "oor", "gramam", "இது",  # ta
    "ఊరు", "గ్రామం", "ఇది",  # te
    "ગામ", "gam", "gaam", "જગ્યા", "છે", "આ",  # gu
    "ಊರು", "ಗ್ರಾಮ", "ಇದು",  # kn
})

# Language names as people type them (in Latin letters, their script or Hindi's).
# Names only: not the two-letter codes ("hi" is the commonest greeting).
LANGUAGE_BY_NAME: dict[str, str] = {
    "hindi": "hi", "हिंदी": "hi", "हिन्दी": "hi",
    "english": "en", "angrezi": "en", "angreji": "en", "अंग्रेजी": "en", "अंग्रेज़ी": "en",
    "इंग्रजी": "en", "इंग्लिश": "en", "ইংরেজি": "en", "ইংলিশ": "en", "ஆங்கிலம்": "en",
    "ஆங்கிலத்தில்": "en", "ஆங்கிலத்துல": "en", "இங்கிலீஷ்": "en", "ఇంగ్లీష్": "en",
    "ఇంగ్లిష్": "en", "અંગ્રેજી": "en", "ઇંગ્લિશ": "en", "ಇಂಗ್ಲಿಷ್": "en", "ಇಂಗ್ಲೀಷ್": "en",
    "bangla": "bn", "bengali": "bn", "bangali": "bn", "বাংলা": "bn", "বাঙলা": "bn",
    "बांग्ला": "bn", "बंगाली": "bn",
    "marathi": "mr", "मराठी": "mr",
    "tamil": "ta", "tamizh": "ta", "thamizh": "ta", "தமிழ்": "ta", "तमिल": "ta",
    "telugu": "te", "తెలుగు": "te", "तेलुगु": "te",
    "gujarati": "gu", "gujrati": "gu", "ગુજરાતી": "gu", "गुजराती": "gu",
    "kannada": "kn", "kannad": "kn", "ಕನ್ನಡ": "kn", "कन्नड़": "kn", "कन्नड": "kn",
}

# "In Tamil" is one word in most of these languages: the name and a case ending
# (मराठीत, বাংলায়, தமிழில், తెలుగులో, ગુજરાતીમાં, ಕನ್ನಡದಲ್ಲಿ). Only a whole language name
# followed by one of these is read as the language (language_in_word).
_CASE_ENDINGS: tuple[str, ...] = (
    "त", "मध्ये", "मधे", "में",  # mr, hi (joined)
    "য়", "তে",  # bn
    "ில்", "ிலே", "ில", "ல", "ுல",  # ta (தமிழில், தமிழ்ல)
    "లో", "ులో",  # te (తెలుగులో, ఇంగ్లీషులో)
    "માં",  # gu
    "ದಲ್ಲಿ", "ದಲ್ಲೇ", "ನಲ್ಲಿ", "ಿನಲ್ಲಿ",  # kn
)
# The sign that ends a name in a consonant (தமிழ், ఇంగ్లీష్): an ending that starts with a
# vowel sign takes its place (தமிழ் + இல் = தமிழில்).
_VIRAMAS = "\u094d\u09cd\u0acd\u0bcd\u0c4d\u0ccd"

_SPACES = re.compile(r"\s+")
_TRIM = ".,!?।॥;:'\"()[]"
# Emoji presentation selector, combining keycap, and the five skin tones (U+1F3FB-FF).
_KEYCAP = {0xFE0F: None, 0x20E3: None} | {tone: None for tone in range(0x1F3FB, 0x1F400)}


def clean(text: str) -> str:
    """Lower-cased, NFC, single-spaced, without surrounding punctuation; a keycap emoji
    digit ("1️⃣") is its plain digit, an emoji of any skin tone ("👍🏽") its plain one."""
    t = unicodedata.normalize("NFC", text or "").translate(_KEYCAP).strip().lower()
    t = _SPACES.sub(" ", t)
    return t.strip(_TRIM + " ")


def tokens(text: str) -> set[str]:
    """The words of ``text`` (cleaned), each without the punctuation around it."""
    return {w.strip(_TRIM) for w in clean(text).split()} - {""}


def ascii_digits(text: str) -> str:
    """Map decimal digits of any script (८४५४३८, ৮৪৫) to ASCII; keep everything else."""
    out = []
    for ch in text:
        value = unicodedata.decimal(ch, None)
        out.append(str(value) if value is not None else ch)
    return "".join(out)


def number(text: str) -> int | None:
    """The whole answer as one small number: "2", "२", "do", "two" -> 2; else None."""
    t = ascii_digits(clean(text)).replace(" ", "")
    if t.isascii() and t.isdigit() and len(t) <= 3:
        return int(t)
    return NUMBER_WORDS.get(clean(text))


# Dashes a phone's keyboard or a copied contact puts between digits ("98765–43210"): the
# hyphen, non-breaking hyphen, figure dash, en and em dash, horizontal bar (as
# core.domain.phone.normalize_phone drops them), and the minus sign.
_DASHES = "\u2010-\u2015\u2212"


def only_digits(text: str) -> str | None:
    """All the digits of an answer that is only digits and separators ("98765 43210",
    "98765–43210" with an en dash or a non-breaking hyphen); format marks are dropped (a
    number copied from a contact comes wrapped in U+202A and U+202C)."""
    t = ascii_digits(without_format_marks(text or "")).strip()
    stripped = re.sub(rf"[\s\-().+{_DASHES}]", "", t)
    return stripped if stripped.isascii() and stripped.isdigit() else None


_DIGIT_RUNS = re.compile(r"\d+")
PINCODE_DIGITS = 6


def pincode_in(text: str) -> str | None:
    """The pincode of an answer holding exactly one 6-digit number among words: "Pin
    845438", "845438 Bettiah", "पिन ८४५४३८" (None if none, or two: which?)."""
    runs = _DIGIT_RUNS.findall(ascii_digits(without_format_marks(text or "")))
    six = [run for run in runs if run.isascii() and len(run) == PINCODE_DIGITS]
    return six[0] if len(six) == 1 else None


_PHONE_AT_END = re.compile(
    rf"^(?P<name>.*?)[\s,;:\-–]*(?P<phone>\+?\d[\d\s\-().{_DASHES}]{{8,}}\d)\W*$")
_PHONE_AT_START = re.compile(
    rf"^[^\w+]*(?P<phone>\+?\d[\d\s\-().{_DASHES}]{{8,}}\d)[\s,;:\-–]*(?P<name>.*?)$")


# Words naming the number that follows a name ("Sita ka number 98765...", "सीता का नंबर",
# "Ramesh mobile no"): no part of the name. Possessives and "is" go with them.
_NUMBER_WORDS = frozenset({
    "number", "no", "no.", "num", "nmbr", "mobile", "mob", "phone", "ph", "contact", "cell",
    "नंबर", "नम्बर", "मोबाइल", "फोन", "फ़ोन", "क्रमांक",
    "নম্বর", "নাম্বার", "মোবাইল", "ফোন", "நம்பர்", "எண்", "மொபைல்", "போன்",
    "నంబర్", "నెంబర్", "మొబైల్", "ఫోన్", "નંબર", "મોબાઇલ", "ફોન",
    "ನಂಬರ್", "ಮೊಬೈಲ್", "ಫೋನ್"})
_NUMBER_GLUE = frozenset({
    "ka", "ki", "ke", "ko", "is", "hai", "का", "की", "के", "है", "चा", "ची", "चे", "एर",
    "এর", "ইজ", "નો", "ની", "ಅವರ", "ది", "my", "her", "his"})


def _without_number_words(name: str) -> str:
    """``name`` without the words naming the number after it ("सीता का नंबर" -> "सीता"):
    only where one of them is a word for number, phone or mobile ("Number" alone is no
    name: "")."""
    tokens = name.split()
    end = len(tokens)
    while end > 0 and (tokens[end - 1].lower().strip(_TRIM) in _NUMBER_WORDS | _NUMBER_GLUE):
        end -= 1
    tail = {t.lower().strip(_TRIM) for t in tokens[end:]}
    if not tail & _NUMBER_WORDS:
        return name
    return " ".join(tokens[:end]).strip(_TRIM + " ,;:-–")


def name_and_number(text: str) -> tuple[str, str] | None:
    """("Ramesh Kumar", "98765 43210") from a name written with a phone number after or
    before it ("Ramesh Kumar, 98765 43210", "9876543210 रमेश", "सीता का नंबर 98765
    43210": the words naming the number are no part of the name); None when the answer
    is not one name and one number (the number's digits in any script, made ASCII)."""
    t = ascii_digits(without_format_marks(text or "")).strip()
    for pattern in (_PHONE_AT_END, _PHONE_AT_START):
        found = pattern.match(t)
        if found is None:
            continue
        name = _without_number_words(found["name"].strip(_TRIM + " ,;:-–"))
        if name and not any(ch.isdigit() for ch in name):
            return name, found["phone"]
    return None


# The word for rupees as each catalog's value question asks for it, and short forms.
# A word that begins another (ರೂಪಾಯಿ, ರೂಪಾಯಿಗಳು) comes after it: the first alternative
# that matches is taken.
_RUPEE_WORDS = re.compile(
    r"(₹|rs\.?|rupees?|rupaye|rupay|रुपये|रुपए|रुपया|रु\.?|/-"
    r"|টাকা|taka|tk\.?|ரூபாய்|ரூ\.?|రూపాయలు|రూపాయి|రూ\.?|રૂપિયા|રૂપિયો|રૂ\.?"
    r"|ರೂಪಾಯಿಗಳು|ರೂಪಾಯಿ|ರೂ\.?)")
# "2 lakh", "1.5 lakh", "১ লাখ", "2 லட்சம்": a number of lakhs (1,00,000), up to two
# decimals; the whole answer (after the rupee word) and nothing else.
LAKH = 100_000
_IN_LAKH = re.compile(
    r"(?P<whole>[0-9]{1,3})(?:\.(?P<part>[0-9]{1,2}))?(?:lakhs?|lacs?|laakh|लाख|লাখ|லட்சம்|லட்ச(?:ங்கள்)?"
    r"|లక్షలు|లక్ష|લાખ|ಲಕ್ಷ)")


def amount_rupees(text: str) -> int | None:
    """Rupees in "1500", "₹1,500", "1500 rs", "रु 1500", "1500 টাকা", "1.5 lakh", "২ লাখ";
    None if not an amount."""
    t = ascii_digits(clean(text))
    t = _RUPEE_WORDS.sub("", t)
    t = t.replace(",", "").replace(" ", "")
    lakhs = _IN_LAKH.fullmatch(t)
    if lakhs is not None:  # "1.5" lakh: 1,50,000
        return int(lakhs["whole"]) * LAKH + int((lakhs["part"] or "").ljust(5, "0"))
    return int(t) if t.isascii() and t.isdigit() and len(t) <= 9 else None


# A weight as people write it: "5 kg", "20kg", "५ किलो", "2.5 kilo", "1 quintal" (100 kg,
# how grain is weighed in a village), "500 gram". Each catalog language's words and their
# Latin spellings; the whole answer and nothing else. A word that begins another comes
# after it (the first alternative that matches is taken).
_KILO_WORDS = ("kilograms?|kilos?|kgs?|kilo|किलोग्राम|किलो|केजी|কিলোগ্রাম|কিলো|কেজি"
               "|கிலோகிராம்|கிலோ|கி\\.கி|కిలోగ్రాములు|కిలోలు|కిలో|కేజీ|કિલોગ્રામ|કિલો|કેજી"
               "|ಕಿಲೋಗ್ರಾಂ|ಕಿಲೋ|ಕೆಜಿ")
_QUINTAL_WORDS = ("quintals?|kwintal|kuntal|quintal|क्विंटल|कुंतल|कुन्तल|কুইন্টাল|குவிண்டால்"
                  "|క్వింటాళ్లు|క్వింటాల్|ક્વિન્ટલ|ಕ್ವಿಂಟಾಲ್")
_GRAM_WORDS = "grams?|gms?|gm|g|ग्राम|গ্রাম|கிராம்|గ్రాములు|గ్రాము|ગ્રામ|ಗ್ರಾಂ"
_WEIGHT = re.compile(
    rf"(?P<n>[0-9]{{1,4}}(?:\.[0-9]{{1,2}})?) ?(?:(?P<kg>{_KILO_WORDS})"
    rf"|(?P<q>{_QUINTAL_WORDS})|(?P<g>{_GRAM_WORDS}))")


def kilograms(text: str) -> float | None:
    """The weight written with its unit, in kg: "5 kg" 5, "1.5 quintal" 150, "500 gm" 0.5;
    None when the answer is not one number and a unit (a bare "5" is an option's number)."""
    found = _WEIGHT.fullmatch(ascii_digits(clean(text)).replace(",", ""))
    if found is None:
        return None
    n = float(found["n"])
    return n * 100 if found["q"] else n / 1000 if found["g"] else n


# --- yes, no, "no problem" and a "not" in a sentence ----------------------------------
# Read as the partner SMS parser reads them (core.domain.dispatch.parse_command): its
# refusals are NO_WORDS', its "no problem" phrases and its negators are these.

# "No problem" and its like ("koi baat nahi", "વાંધો નથી", "பிரச்சனை இல்லை", "ತೊಂದರೆ
# ಇಲ್ಲ") begin or end with a no, and refuse nothing: left out before a message is read.
# Alone, it is no answer to a yes/no question ("koi baat nahi" is also "never mind": book
# it, or forget it?): asked again; a yes or a no said with it is the answer.
_NO_PROBLEM: tuple[tuple[str, ...], ...] = tuple(sorted(
    {tuple(clean(p).split()) for p in NO_PROBLEM}, key=len, reverse=True))
# A word that turns a sentence around ("cancel mat karo", "don't cancel", "বাতিল করবনা").
NEGATORS = PARTNER_NEGATORS | NO_WORDS
# What may go with a no and change nothing: a "ji" or "sir", a thanks ("no thanks"),
# "want" or "do" ("nahi chahiye": not wanted, "nahi karna", "નથી જોઈતું").
_WITH_A_NO = _POLITE | THANK_WORDS | {
    "chahiye", "chaiye", "chahie", "चाहिए", "चाहिये", "karna", "karni", "करना", "करनी",
    "જોઈતું", "જોઈએ", "joitu", "joie"}
_SPLIT = re.compile(r"[\s.,!?।॥;:\"()\[\]]+")


def said_words(text: str) -> list[str]:
    """The words of ``text`` in order (cleaned), punctuation between them dropped, and an
    apostrophe inside one ("don't" is "dont", as NEGATORS has it)."""
    plain = clean(text).replace("'", "").replace("\u2019", "")
    return [w for w in _SPLIT.split(plain) if w]


def _words_without_no_problem(text: str) -> tuple[list[str], bool]:
    """The words of ``text`` without its "no problem" phrases, and whether it had one."""
    said, out, i, found = said_words(text), [], 0, False
    while i < len(said):
        phrase = next((p for p in _NO_PROBLEM if tuple(said[i:i + len(p)]) == p), None)
        if phrase is None:
            out.append(said[i])
            i += 1
        else:
            found, i = True, i + len(phrase)
    return out, found


def without_no_problem(text: str) -> str | None:
    """What a message says besides its "no problem" phrase ("koi baat nahi, haan" ->
    "haan"; "" if nothing), or None when it has none."""
    rest, found = _words_without_no_problem(text)
    return " ".join(rest) if found else None


def refuses(text: str) -> bool:
    """A no, in a word or a few: "nahi", "no no", "nahi ji", "ji nahi", "no thanks",
    "nahi chahiye", "முடியாது", "ಬೇಡ ಸರ್". Every word a no or one that goes with one, a
    no among them; "no problem" is none ("વાંધો નથી"), nor a no with another word ("ok
    nahi", "code nahi mila": asked again)."""
    said, _ = _words_without_no_problem(text)
    if " ".join(said) in NO_WORDS:
        return True
    any_no, i = False, 0
    while i < len(said):
        if i + 1 < len(said) and f"{said[i]} {said[i + 1]}" in NO_WORDS:
            any_no, i = True, i + 2  # "parbo na", "lagbe na"
        elif said[i] in NO_WORDS:
            any_no, i = True, i + 1
        elif said[i] in _WITH_A_NO:
            i += 1
        else:
            return False
    return any_no


def negated(text: str) -> bool:
    """Whether a no or a "not" is among the words ("cancel mat karo", "don't cancel",
    "cancel வேணாம்", "বাতিল করবনা"); a "no problem" phrase negates nothing."""
    said, _ = _words_without_no_problem(text)
    return any(w in NEGATORS for w in said) or any(
        f"{a} {b}" in NO_WORDS for a, b in zip(said, said[1:], strict=False))


def is_yes(text: str) -> bool:
    """A yes, alone or with a "no problem" ("koi baat nahi, haan")."""
    rest = without_no_problem(text)
    return clean(text) in YES_WORDS or (rest is not None and rest in YES_WORDS)


def is_no(text: str) -> bool:
    """A no (refuses): "nahi", "no thanks", "முடியாது"; never a "no problem"."""
    return refuses(text)


def acknowledged(text: str) -> bool:
    """An ok or a thanks, nothing asked: "ok", "👍", "dhanyavad", "ok thank you ji"; a
    "no problem" too ("koi baat nahi", "no problem, thanks", "વાંધો નથી")."""
    if clean(text) in YES_WORDS | THANK_WORDS:
        return True
    rest = without_no_problem(text)
    if rest is not None:
        meant = set(rest.split()) - _POLITE
        return all(w in YES_WORDS or w in THANK_WORDS for w in meant)
    meant = tokens(text) - _POLITE
    return bool(meant) and all(w in YES_WORDS or w in THANK_WORDS for w in meant)


def names_another_place(text: str) -> bool:
    """The place just chosen is the wrong one: "no, other village", "nahi, dusra gaon",
    "नहीं, दूसरा गाँव", "galat gaon hai", "wrong". Only a no, other or wrong, the place's
    word and small words around them ("dusra mandir" is a landmark: the other temple)."""
    said = tokens(text)
    return bool(said & _OTHER) and said <= NO_WORDS | _OTHER | _PLACE


def guess_language(text: str) -> str | None:
    """A language from the script of the text (None for Latin letters, digits, emoji)."""
    counts: dict[str, int] = {}
    for ch in text or "":
        code = ord(ch)
        for lo, hi, lang in _SCRIPTS:
            if lo <= code <= hi:
                counts[lang] = counts.get(lang, 0) + 1
    if not counts:
        return None
    return max(counts, key=lambda k: counts[k])


# Words only Hindi written in Latin letters has ("parcel bhejna hai", "mujhe", "haan"):
# one of them and no other script is Hindi, asked as a Devanagari message is ("shall we
# talk in Hindi?"). Not the words other languages write alike: "thik", "accha", "bhai"
# (Bengali too), "dhanyavad", "namaskar" (Marathi, Kannada), "ha", "na" (Gujarati),
# "nahi", "nhi" (Marathi: "samajla nahi"), "kya", "aap" (Gujarati: "kya che", "aap kem").
HINGLISH_WORDS = frozenset({
    "hai", "hain", "haan", "haanji", "hanji", "nahin", "kyu", "kyun",
    "kaise", "kahan", "kab", "mujhe", "mujhko", "mera", "meri", "mere", "humko", "hamko",
    "aapka", "aapko", "karna", "karni", "karo", "kijiye", "chahiye", "chaiye",
    "bhejna", "bhejni", "bhejana", "namaste", "namastey", "batao", "bataiye", "aayega",
    "milega", "shukriya"})


def hinglish(text: str) -> bool:
    """Whether ``text`` is Hindi in Latin letters: one of HINGLISH_WORDS, no other
    script ("mujhe parcel bhejna hai", "haan"; not "hello", "ok")."""
    return guess_language(text) is None and bool(tokens(text) & HINGLISH_WORDS)


# HINGLISH_WORDS another language shares in a FIRST message: "hai" is how many type "Hi"
# ("Hai sir", "Hai anna"), "namaste" every language's greeting; "mera"/"mere"/"meri"
# (Punjabi too), "karo" (Gujarati "booking karo"), "kab" (a "cab" typed so) say little
# alone.
_HINGLISH_GREETINGS = frozenset({"hai", "namaste", "namastey"})
_HINGLISH_WEAK = frozenset({"mera", "mere", "meri", "karo", "kab"})
# Words of Marathi, Gujarati, Bengali (and a few of Tamil, Telugu, Kannada) in Latin
# letters: a message with one is not Hindi ("Namaste, mala parcel pathvaycha aahe").
NOT_HINGLISH_WORDS = frozenset({
    "mala", "aahe", "ahe", "aahes", "pathvaycha", "pathvaychi", "pathvayche", "pahije",
    "majha", "mazha", "majhe", "kuthe",  # Marathi
    "che", "kem", "moklvu", "moklavu",  # Gujarati ("chhe" is Hindi's six too)
    "korte", "pathate", "pathabo", "kothay",  # Bengali ("ami", "amar": Hindi names too)
    "venum", "vendum", "enaku", "vanakkam", "kavali", "naaku", "beku", "nanage"})


def hinglish_first(text: str) -> bool:
    """Whether a FIRST message (no language chosen yet) is Hindi in Latin letters, to be
    offered Hindi rather than the list: stricter than hinglish(). A HINGLISH_WORDS word
    no other language shares ("bhejna", "mujhe", "haan"), or two of them not both
    greetings ("mera parcel kab"); not a greeting alone ("Hai sir", "namaste ji"), nor
    with a word of another language (NOT_HINGLISH_WORDS)."""
    said = tokens(text)
    hindi = said & HINGLISH_WORDS
    if guess_language(text) is not None or not hindi or said & NOT_HINGLISH_WORDS:
        return False
    # "hai" greets only as the first word ("Hai sir"); later it is Hindi's verb ("parcel
    # bhejne hai", "rate kya hai").
    later = [w.strip(_TRIM) for w in clean(text).split()[1:]]
    greetings = _HINGLISH_GREETINGS - {"hai"} if "hai" in later else _HINGLISH_GREETINGS
    return bool(hindi - greetings - _HINGLISH_WEAK) or (
        len(hindi) >= 2 and not hindi <= greetings)


# The nukta of each Indic script (Devanagari U+093C, Bengali, Gurmukhi, Gujarati, Odia,
# Telugu, Kannada): "ऑफ़िस" and "ऑफिस", "বাড়ি" typed with ড় or with ড and ় are one word.
_NUKTAS = dict.fromkeys(map(ord, "\u093c\u09bc\u0a3c\u0abc\u0b3c\u0c3c\u0cbc"))


def without_nukta(text: str) -> str:
    """``text`` cleaned (clean()) and without nuktas, precomposed letters ("ज़", "ড়")
    taken apart first: for looking a word up however it was typed."""
    return clean(unicodedata.normalize("NFD", text or "").translate(_NUKTAS))


def language_in_word(word: str) -> str | None:
    """The language a word names: its name ("தமிழ்") or its name with a case ending
    ("தமிழில்", "मराठीत", "ಕನ್ನಡದಲ್ಲಿ": in Tamil, Marathi, Kannada); else None."""
    found = LANGUAGE_BY_NAME.get(word)
    for ending in _CASE_ENDINGS:
        if found or not word.endswith(ending) or len(word) == len(ending):
            continue
        stem = word[: -len(ending)]
        found = LANGUAGE_BY_NAME.get(stem)
        if found is None and unicodedata.category(ending[0]) in ("Mn", "Mc"):
            found = next((LANGUAGE_BY_NAME[stem + v] for v in _VIRAMAS
                          if stem + v in LANGUAGE_BY_NAME), None)
    return found


def language_named(text: str) -> str | None:
    """The language code of a typed language name ("Bengali", "हिन्दी", "tamil"), also
    with a case ending ("தமிழில்", "in Tamil")."""
    return language_in_word(clean(text))


def language_mentioned(text: str) -> str | None:
    """The language of the first language name among the words ("मराठी में", "tamil
    please", "मराठीत बोला"); None if none is named."""
    for word in clean(text).split():
        found = language_in_word(word.strip(_TRIM))
        if found:
            return found
    return language_named(text)


def command(text: str) -> str | None:
    """A global command word: "menu", "help", "language", "back", "stop" or "start"
    (else None)."""
    t = clean(text) or (text or "").strip()  # "?" alone is all punctuation
    if not t:
        return None
    if t in MENU_WORDS or text.strip() in {"0", "०"} or ascii_digits(text.strip()) == "0":
        return "menu"
    if t in HELP_WORDS:
        return "help"
    if t in LANGUAGE_WORDS:
        return "language"
    if t in BACK_WORDS:
        return "back"
    if t in STOP_WORDS:
        return "stop"
    if t in START_WORDS:
        return "start"
    return None


# --- an option's label typed back instead of its number ---------------------------------

# What punctuation and marks a label or a typed answer may carry, or not: commas and
# brackets between its parts, and the nukta some type and some leave out ("कागज़",
# "कागज"; "আয়" as one letter or two).
_LABEL_PUNCT = re.compile(r"[.,!?।॥;:'\"()\[\]/\-–—]+")
_NUKTAS = {0x093C: None, 0x09BC: None, 0x0ABC: None, 0x0CBC: None}


def label_form(text: str) -> str:
    """``text`` as an option's label is compared in: cleaned (clean), punctuation turned
    into spaces, no nukta: "Papers, documents" and "papers documents" are one."""
    plain = unicodedata.normalize("NFD", clean(text)).translate(_NUKTAS)
    plain = unicodedata.normalize("NFC", plain)
    return _SPACES.sub(" ", _LABEL_PUNCT.sub(" ", plain)).strip()


def label_parts(label: str) -> set[str]:
    """The forms a label is typed back in: whole, and each of its parts between commas,
    a colon or brackets ("Papers, documents": "documents"; "हल्का: 5 किलो तक (चीनी का
    थैला)": "हल्का", "5 किलो तक")."""
    parts = {label_form(part) for part in re.split(r"[,:()\n]", label)}
    return ({label_form(label)} | parts) - {""}


# The parcel's options as people type them in Latin letters (Hinglish) or in a word of
# their own, besides every catalog's labels (label_parts): keyed by the label's catalog
# key. "chhota" (small) is what fits in a bag; "bada"/"badi" alone are left out (a sack
# or a vehicle?).
CHOICE_WORDS: dict[str, frozenset[str]] = {
    "size.bag": frozenset({"jhola", "jhole me", "jhole mein", "thaila", "thela", "chhota",
                           "chota", "chhota saman", "small", "bag"}),
    "size.box": frozenset({"dibba", "dabba", "dibbe me", "dibbe mein", "box", "carton"}),
    "size.sack": frozenset({"bori", "bora", "badi bori", "sack"}),
    "size.vehicle": frozenset({"gaadi", "gadi", "gaadi chahiye", "gadi chahiye", "vehicle",
                               "tempo"}),
    "bot.category.documents": frozenset({"kagaz", "kagaj", "kaagaz", "kaagaj", "dastavez",
                                         "dastavej", "document", "paper"}),
    "bot.category.food": frozenset({"khana", "khaana", "khane ka saman",
                                    "khane ka samaan"}),
    "bot.category.clothes": frozenset({"kapde", "kapda", "kapre", "kapra", "cloth"}),
    "bot.category.medicine": frozenset({"dawai", "dawa", "davai", "dava", "medicines"}),
    "bot.category.grain_produce": frozenset({"anaj", "anaaj", "sabzi", "sabji", "grain",
                                             "vegetables"}),
    "bot.category.electronics": frozenset({"tv", "electronic"}),
    "bot.category.household": frozenset({"ghar ka saman", "ghar ka samaan"}),
    "bot.category.other": frozenset({"kuch aur", "kuchh aur", "other"}),
    "bot.weight.w5": frozenset({"halka", "halki"}),
    "tier.express": frozenset({"jaldi", "jaldi wala", "jaldi wali", "jaldi se", "fast",
                               "express", "tez"}),
    "tier.standard": frozenset({"normal", "normal wala", "sadharan", "saadharan", "samanya",
                                "standard"}),
    "tier.economy": frozenset({"sasta", "sasta wala", "sasta wali", "saste wala", "sasti",
                               "cheap", "economy"}),
}


# --- a village typed by its name at the place question ----------------------------------

# The words said around a village's name ("Lauriya gaon", "village Lauriya", "गाँव
# Lauriya"): left out before the name is looked up.
_AROUND_A_NAME = frozenset({"village", "gaon", "gaanv", "gav", "gaav", "gao", "gram", "po",
                            "post", "office", "गाँव", "गांव", "गाव", "গ্রাম", "ஊர்",
                            "கிராமம்", "ఊరు", "గ్రామం", "ગામ", "ಊರು", "ಗ್ರಾಮ"})
MAX_NAME_WORDS = 3


def village_key(name: str) -> str:
    """A village's name as village_typed gives it: cleaned, the place's words around it
    left out (India Post's "Sundar Gaon" is found as "Sundar Gaon" and as "Sundar")."""
    said = [w.strip(_TRIM) for w in clean(visible(name)).split()]
    return " ".join(w for w in said if w and w not in _AROUND_A_NAME)


def village_typed(text: str) -> str | None:
    """The name of a village as typed alone at the place question ("Lauriya", "Lauriya
    gaon", "village Bairiya"): one to MAX_NAME_WORDS words of letters, cleaned, the
    place's words around it left out; None for anything else (a sentence, digits, a
    yes, no, thanks or Hindi in Latin letters: "kal bhejna hai", "haan")."""
    said = [w.strip(_TRIM) for w in clean(visible(text)).split()]
    said = [w for w in said if w and w not in _AROUND_A_NAME]
    if not said or len(said) > MAX_NAME_WORDS:
        return None
    if not all(ch.isalpha() or ch in ".-'" or unicodedata.category(ch) in ("Mn", "Mc")
               for w in said for ch in w):
        return None
    meant = set(said)
    if meant & (YES_WORDS | NO_WORDS | THANK_WORDS | HINGLISH_WORDS | SKIP_WORDS) or (
            " ".join(said) in YES_WORDS | NO_WORDS | SKIP_WORDS):
        return None
    return " ".join(said)
