"""What federation carries as EDUs and /sync mostly as ephemeral data: presence, typing
notifications, receipts and read markers."""
