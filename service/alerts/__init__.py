"""Alert delivery: channels, messages, senders and the delivery log."""
