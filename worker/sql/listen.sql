-- The wake-up channel. River's clients, and our insert trigger, notify
-- `<schema>.river_insert` with {"queue": "<name>"} when jobs become available.

-- name: listen_insert
LISTEN "metadata.river_insert"

-- name: connection_ping
-- A round trip on the listening connection: on a half-open socket it fails
-- (TCP user timeout) instead of leaving us listening to nothing.
SELECT 1
