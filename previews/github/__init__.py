"""GitHub: webhook signature and parsing, the REST client, infra notifications."""
