"""Kombu's filesystem transport with atomic message files (the embedded broker).

Kombu creates a message file under its final name and then writes it, so a worker polling
at that instant can take the empty or half-written file: it fails to decode it and the
message is gone (seen here: an experiment dispatched while the worker polled never started).
Here a message is written under a name no queue reads (a dot file), then renamed into place
in one step.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    # kombu's own classes disagree on this signature (AbstractChannel: message; filesystem: payload)
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Put a message on ``queue``: written aside, then renamed into the queue's folder."""
        # Kombu's name: the receive order (ms timestamp), a unique id, the queue it belongs to.
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        folder = self.data_folder_out
        tmp = os.path.join(folder, f".{name}.tmp")  # kombu takes only "<x>.<queue>.msg"
        try:
            with open(tmp, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(tmp, os.path.join(folder, name))
        except OSError as exc:
            raise ChannelError(f"Cannot add {name!r} to {folder}") from exc
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


class Transport(filesystem.Transport):
    Channel = Channel
