"""The channel-neutral conversation engine and the booking dialog defined as data.

``engine`` runs steps (prompt, parse, next step, misses, global commands) over a plain
state dict; ``booking`` declares the booking dialog's steps; ``words`` understands digits
in any Indian script, number words and romanized Hindi; ``ports`` is what the dialog asks
of the outside world (addresses, fares, bookings, people), implemented by core.services.
Channels render the engine's output themselves: WhatsApp text in bots/, TwiML in ivr_flows/.
"""
