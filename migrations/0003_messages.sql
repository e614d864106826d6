-- Every room message and direct message the server accepted: the history a
-- joining user is shown, the pages they ask for, and DMs waiting for a
-- recipient who was offline.
--
-- AUTOINCREMENT: an id is never used twice, even after the newest rows are
-- purged, so ids stay strictly increasing across restarts.
-- sender and recipient are names, not user ids: deleting an account keeps its
-- messages, attributed to the name as it was.
CREATE TABLE messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    ts         TEXT    NOT NULL,                 -- as sent: ISO-8601 UTC, milliseconds
    sender     TEXT    NOT NULL COLLATE NOCASE,
    recipient  TEXT             COLLATE NOCASE,  -- NULL: the room
    text       TEXT    NOT NULL,
    -- 0 for a DM stored while its recipient had no session, until it is given
    -- to them at their next login.
    delivered  INTEGER NOT NULL DEFAULT 1 CHECK (delivered IN (0, 1))
);

-- Only DMs are indexed: every index is written for every message it covers,
-- and room messages, the bulk, are read in id order (the table's own order).
-- Time limits (retention, export) scan from the oldest in id order too, where
-- the old rows are.
CREATE INDEX messages_to ON messages (recipient, id) WHERE recipient IS NOT NULL;
CREATE INDEX messages_from ON messages (sender, id) WHERE recipient IS NOT NULL;
CREATE INDEX messages_waiting ON messages (recipient, id) WHERE delivered = 0;
