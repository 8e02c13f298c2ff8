"""Readers for conversation formats (chat message lists, LoCoMo)."""

from .locomo import is_locomo, locomo_messages, load_locomo, read_messages_file

__all__ = ["is_locomo", "locomo_messages", "load_locomo", "read_messages_file"]
