-- Session settings of the worker's dedicated connections.

-- name: session_set_dead_client_detection
-- The server's side of noticing a dead worker. Client keepalives only tell
-- the worker that the server is gone; without these, a session whose worker
-- vanished (a host lost, a half-open connection) keeps its leases and the
-- leadership until the server's own TCP keepalive, about 2 h by default.
-- Keepalive probes on an idle session, a bound on unacknowledged writes, and a
-- check for a vanished client while a statement runs: the backend ends within
-- seconds, and with it what its session holds. Every user may set them.
SELECT set_config('tcp_keepalives_idle', %(idle)s, false),
       set_config('tcp_keepalives_interval', %(interval)s, false),
       set_config('tcp_keepalives_count', %(count)s, false),
       set_config('tcp_user_timeout', %(user_timeout)s, false),
       set_config('client_connection_check_interval', %(check_interval)s, false)
