"""The masked self-attention model (layers) and its SavedModel export."""
