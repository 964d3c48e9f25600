"""Channel code for chat and SMS: parse Twilio's request, call the core, render TwiML."""
