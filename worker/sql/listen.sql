-- The wake-up channel. River's clients, and our insert trigger, notify
-- `<schema>.river_insert` with {"queue": "<name>"} when jobs become available.

-- name: listen_insert
LISTEN "metadata.river_insert"

-- name: connection_ping
-- A round trip on a connection whose session matters (the listener's, the
-- leader's): on a half-open socket it fails (TCP user timeout) instead of
-- leaving us listening to nothing, or leading on a lock already lost.
SELECT 1
