"""A small dialog engine: steps with a prompt, a parser and a next step, over plain state.

The engine knows nothing of WhatsApp or TwiML. It takes a ``UserInput`` (text or keypad
digits, a location, a media kind), the conversation's ``DialogState`` (JSON-safe, stored in
PostgreSQL by the caller) and the ``ports`` (the outside world), and returns what to say as
``Say``/``Choices`` values that each channel renders in its own way.

Rules every step gets for free:
- global commands: "0"/"menu" -> main menu (a draft booking is kept), "help" -> the
  step's help and its prompt again, "language" -> the language list (at a booking step, or
  one marked ``after_language``, ``BACK_AFTER_LANGUAGE`` keeps which, to be asked again once
  one is chosen), a language's name
  ("English", "தமிழ்") -> that language and the same question in it, "back" -> the
  previous question (in a dialog that says which one it is: ``Dialog.previous``), unless
  the step takes the words as its own answer (``Step.own_answer``: a village so named);
  at a step of a group, a dialog's ``abandon`` may take the input (a bare "cancel"): the
  draft is dropped;
- an answer a step cannot use is a *miss*: a short re-ask with the same choices; the
  third miss in a row offers a person instead;
- a photo is acknowledged and the step asked again; a voice note offers a call back;
- ``return_to``: while changing one detail before confirming, a group's last step goes
  back to the confirmation instead of onwards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.dialog import words

MAX_MISSES = 3
# state.data key: the step the language list was asked from, asked again once a language
# is chosen (the dialog's language step reads it; see booking._language_prompt).
BACK_AFTER_LANGUAGE = "back_after_language"


def copy_data(value: Any) -> Any:
    """A deep copy of dialog data, which is JSON (it is stored as JSONB): dicts and lists
    are copied, tuples become lists as JSONB would make them, anything else is shared.
    A turn copies its data twice; copy.deepcopy cost several times this."""
    if isinstance(value, dict):
        return {k: copy_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [copy_data(v) for v in value]
    return value


@dataclass(frozen=True)
class Say:
    """One catalog message (``key`` in templates_i18n) with its parameters."""

    key: str
    params: Mapping[str, Any] = field(default_factory=dict)
    joined: bool = False  # continue the previous line (a fare breakdown), not a new paragraph
    lang: str | None = None  # always in this language (the IVR's language menu), else the user's
    # Reads back something of the caller's own however few its digits (the end of a booking
    # number): the phone speaks it with <Say>, never renders nor keeps it (ivr_flows.audio).
    private: bool = False


@dataclass(frozen=True)
class Choices:
    """A numbered list, 1..n; labels are catalog messages or literal names (villages).

    ``more`` adds "9 = more" (a paged list)."""

    options: tuple[Say | str, ...]
    more: bool = False


Out = Say | Choices


@dataclass(frozen=True)
class UserInput:
    """What the user did, whatever the channel: typed/keyed text, a location, a media kind."""

    text: str = ""
    latitude: float | None = None
    longitude: float | None = None
    media: str | None = None  # "photo", "voice", "other" (only when no text came with it)

    @property
    def has_location(self) -> bool:
        return self.latitude is not None and self.longitude is not None


@dataclass
class DialogState:
    """Where a conversation is: the step, free data (slots and step scratch), misses."""

    step: str
    data: dict[str, Any] = field(default_factory=dict)
    misses: int = 0

    @property
    def slots(self) -> dict[str, Any]:
        return self.data.setdefault("slots", {})


@dataclass(frozen=True)
class Goto:
    """Valid answer: say ``say``, then go to ``step`` (and ask its prompt)."""

    step: str
    say: Sequence[Out] = ()
    prompt: bool = True


@dataclass(frozen=True)
class Retry:
    """An answer the step cannot use (a miss): say why, then ask the same step again."""

    say: Sequence[Out] = ()


class Redirect(Exception):  # noqa: N818 (a step's answer, not an error)
    """Raised by a prompt that cannot be shown as things are (no vehicle carries the parcel
    to quote for), or by a handler that finds so (the rate card changed since): the dialog
    goes to ``step`` instead, saying ``say`` first."""

    def __init__(self, step: str, say: Sequence[Out] = ()) -> None:
        super().__init__(step)
        self.step, self.say = step, tuple(say)


@dataclass(frozen=True)
class Stay:
    """A valid answer that leaves us on this step (e.g. outside the service area)."""

    say: Sequence[Out] = ()


Result = Goto | Retry | Stay


@dataclass
class Ctx:
    """What a step's functions see: the state, the ports and the language."""

    state: DialogState
    ports: Any
    lang: str

    @property
    def slots(self) -> dict[str, Any]:
        return self.state.slots

    @property
    def scratch(self) -> dict[str, Any]:
        """Per-step temporary data (lists shown, page), dropped when the step changes."""
        return self.state.data.setdefault("scratch", {})

    def after(self, default: str) -> str:
        """Next step at the end of a group: back to the confirmation while changing one
        detail, else ``default``."""
        target = self.state.data.get("return_to")
        return target if target else default


@dataclass(frozen=True)
class Step:
    """One question. ``prompt`` says it; ``handle`` parses an answer into a Result.

    ``help`` is the catalog key explaining the step (or a function of the context that
    gives it, when what is true depends on it); ``group`` marks steps that fill a
    booking draft (a draft is offered again after a break); ``location`` says the step
    takes a shared location; ``any_text`` that any words may be its answer (a landmark:
    "Bangla", a bungalow, is no switch to Bengali there); ``own_answer`` says of an input
    that it is this step's answer before any global word is looked for (a village named
    "Char" or "Pachal" on the village list: that village, not 4 nor "back"). A step of a
    group, or one with ``after_language`` (a question that is no booking's, "Cancel booking
    ...?"), is asked again once a language is chosen from it (BACK_AFTER_LANGUAGE)."""

    name: str
    prompt: Callable[[Ctx], list[Out]]
    handle: Callable[[Ctx, UserInput], Result]
    help: str | Callable[[Ctx], str]
    group: str | None = None
    location: bool = False
    any_text: bool = False
    own_answer: Callable[[Ctx, UserInput], bool] | None = None
    after_language: bool = False

    def help_key(self, ctx: Ctx) -> str:
        return self.help(ctx) if callable(self.help) else self.help


@dataclass(frozen=True)
class Dialog:
    steps: Mapping[str, Step]
    menu: str  # the main menu step
    language: str  # the language-choice step
    offer_person: str  # offered after MAX_MISSES misses
    voice_callback: str  # offered when a voice note arrives
    not_understood: str  # catalog key said before a re-ask
    # The question before the current one ("back"), None at the first; a dialog without
    # it takes a back word as an answer (a keypad sends none).
    previous: Callable[[Ctx], str | None] | None = None
    # A language's name sent at any step ("English", "தமிழ்"): its answer, else the
    # step takes the name as an answer.
    switch_language: Callable[[Ctx, str], Result] | None = None
    # An input at a step of a group that gives up the whole draft (a bare "cancel",
    # "rehne do"): its answer, else None (the step's own handler answers).
    abandon: Callable[[Ctx, UserInput], Result | None] | None = None

    def __post_init__(self) -> None:
        for name in (self.menu, self.language, self.offer_person, self.voice_callback):
            if name not in self.steps:
                raise ValueError(f"dialog has no step {name!r}")

    def step(self, name: str) -> Step:
        return self.steps.get(name) or self.steps[self.menu]


def enter(dialog: Dialog, ctx: Ctx, name: str, say: Sequence[Out] = (),
          prompt: bool = True) -> list[Out]:
    """Move to step ``name`` (fresh scratch, no misses) and return what to say."""
    state = ctx.state
    if name != state.step:
        state.data.pop("scratch", None)
    state.step = name if name in dialog.steps else dialog.menu
    state.misses = 0
    out = list(say)
    if prompt:
        try:
            out += dialog.step(state.step).prompt(ctx)
        except Redirect as to:
            if to.step == state.step:
                raise  # no way round it
            return enter(dialog, ctx, to.step, [*out, *to.say])
    return out


def ask_again(dialog: Dialog, ctx: Ctx, step: Step) -> list[Out]:
    """The step's prompt again (after a miss, help, a photo), or the step it redirects to."""
    try:
        return step.prompt(ctx)
    except Redirect as to:
        return enter(dialog, ctx, to.step, to.say)


def turn(dialog: Dialog, state: DialogState, inp: UserInput, ports: Any,
         lang: str) -> list[Out]:
    """Answer one user input: apply global rules, then the current step; mutate ``state``."""
    ctx = Ctx(state, ports, lang)
    step = dialog.step(state.step)
    if state.step not in dialog.steps:
        return enter(dialog, ctx, dialog.menu)

    if inp.media and not inp.text.strip() and not inp.has_location:
        if inp.media == "voice":
            _come_back_to(dialog, state, step)
            return enter(dialog, ctx, dialog.voice_callback)
        return [Say("bot.media.photo")] + ask_again(dialog, ctx, step)

    own = (step.own_answer is not None and not inp.has_location
           and step.own_answer(ctx, inp))
    cmd = words.command(inp.text) if not inp.has_location and not own else None
    if cmd == "back" and dialog.previous is not None:
        before = dialog.previous(ctx)
        if before is not None:
            return enter(dialog, ctx, before)
        cmd = "menu"  # back from a first question: where it was asked from
    if cmd == "menu":
        if step.group is not None:
            # Keep the draft, and that it was only a change before the confirmation: it
            # is offered again later, and goes back to the confirmation as it would have.
            state.data["draft_step"] = step.name
        elif not state.data.get("draft_step"):
            # No draft is offered any more: nothing to go back to. While one is (a second
            # "0", or "0" at the menu or the resume question) the change stays a change.
            state.data.pop("return_to", None)
        return enter(dialog, ctx, dialog.menu)
    if cmd == "help":
        return [Say(step.help_key(ctx))] + ask_again(dialog, ctx, step)
    if cmd == "language":
        if step.group is not None:
            state.data["draft_step"] = step.name
            state.data[BACK_AFTER_LANGUAGE] = step.name
        elif step.after_language:
            state.data[BACK_AFTER_LANGUAGE] = step.name
        return enter(dialog, ctx, dialog.language)
    # "English" at "Who will receive the parcel?" is no name: the language.
    named = (words.language_named(inp.text)
             if dialog.switch_language and not step.any_text and not own else None)
    dropped = (dialog.abandon(ctx, inp)
               if dialog.abandon and step.group is not None and not own else None)
    try:
        if dropped is not None:
            result = dropped
        elif named is not None and dialog.switch_language is not None:
            result = dialog.switch_language(ctx, named)
        else:
            result = step.handle(ctx, inp)
    except Redirect as to:
        result = Goto(to.step, to.say)
    if isinstance(result, Goto):
        return enter(dialog, ctx, result.step, result.say, result.prompt)
    if isinstance(result, Stay):
        state.misses = 0
        return list(result.say) + ask_again(dialog, ctx, step)
    state.misses += 1
    if state.misses >= MAX_MISSES and step.name != dialog.offer_person:
        _come_back_to(dialog, state, step)
        return enter(dialog, ctx, dialog.offer_person)
    reason = list(result.say) or [Say(dialog.not_understood)]
    return reason + ask_again(dialog, ctx, step)


def _come_back_to(dialog: Dialog, state: DialogState, step: Step) -> None:
    """Remember ``step`` as where to go back to after an offer (a person, a call back);
    on an offer step itself keep the step from before it, or "No" would lead back to
    the offer again."""
    if step.name in (dialog.offer_person, dialog.voice_callback):
        return
    state.data["after_offer"] = step.name
    if step.group is not None:
        state.data["draft_step"] = step.name
