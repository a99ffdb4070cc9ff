"""Job records: their states and the store that keeps them."""
