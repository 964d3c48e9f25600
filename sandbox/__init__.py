"""Local HTTP emulators of Twilio and Razorpay (sandbox mode and tests only)."""
