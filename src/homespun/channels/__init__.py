"""Chat channels (Telegram, Slack): a message becomes a run of the assistant graph.

The channel modules import their optional libraries (`homespun[telegram]`, `homespun[slack]`);
import them directly: `homespun.channels.telegram`, `homespun.channels.slack`.
"""

from .common import ChannelCore, Reply, is_allowed, split_message
from .secrets import SecretError, get_secret

__all__ = ["ChannelCore", "Reply", "SecretError", "get_secret", "is_allowed", "split_message"]
