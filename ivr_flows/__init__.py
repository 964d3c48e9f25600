"""Voice channel: Twilio Voice webhooks in, TwiML out; prompt audio cache."""
