"""Data flows one way: raw files → tidy tables → samples (histories, labels) → prompts → splits → parquet."""
