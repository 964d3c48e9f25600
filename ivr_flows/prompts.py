"""`./run prompts`: render the IVR's missing prompt audio with gTTS, ahead of calls.

Renders every ``ivr.*`` / ``voice.*`` catalog text without placeholders, in all eight
languages, into the prompt cache (DATA_DIR/prompts) that `./run serve` plays with <Play>.
One prompt is tried first: if Google cannot be reached, it says so and stops at once
instead of timing out on every prompt (calls meanwhile use Twilio's <Say>).
"""

from __future__ import annotations

import argparse
import logging
import sys

from ivr_flows import audio


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="./run prompts", description=__doc__.splitlines()[0])
    ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # one summary line, not a warning per prompt
    prompts = audio.catalog_prompts()
    missing = [(lang, text) for lang, text in prompts if not audio.audio_path(lang, text).is_file()]
    where = audio.cache_dir()
    if not missing:
        print(f"All {len(prompts)} IVR prompts are already rendered in {where}.")
        return 0
    print(f"{len(missing)} of {len(prompts)} IVR prompts to render with gTTS into {where} ...",
          flush=True)
    lang, text = missing[0]
    if not audio.render(lang, text):
        print("./run prompts: cannot reach Google's text-to-speech service (no internet, or "
              "it refused us). Nothing was rendered; calls will speak these prompts with "
              "Twilio's <Say> until you run `./run prompts` again.", file=sys.stderr)
        return 1
    cached, rendered, failed = audio.render_missing()
    print(f"Done: {rendered + 1} rendered now, {cached - 1} were already cached, "
          f"{failed} failed.")
    if failed:
        print(f"./run prompts: {failed} prompts could not be rendered; run it again later "
              "(calls use <Say> for them meanwhile).", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
