"""Operations on a deployed run: deletion requests with a ledger, and the scoring service's model access."""
