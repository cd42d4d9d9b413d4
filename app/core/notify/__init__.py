"""Notifications: the Notifier interface and backends, and the words events are told in."""
