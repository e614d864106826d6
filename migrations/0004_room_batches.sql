-- The room's messages, stored a commit at a time: the room messages of one
-- group commit (authchat/journal.py) share a row, a JSON list, up to 256 a
-- row (more make more rows, and so do DMs between them). A row a message
-- cost SQLite 6.4 µs a message, a fifth and more of the server's broadcast
-- throughput (docs/benchmarks.md, "What storing messages costs").
CREATE TABLE room_batches (
    last_id   INTEGER PRIMARY KEY,  -- the id of its newest message
    first_id  INTEGER NOT NULL,     -- and of its oldest: every id between is one of its own
    ts        TEXT    NOT NULL,     -- the commit's time, which each of its messages carries
    messages  TEXT    NOT NULL,     -- JSON, oldest first: [[sender, text], ...]
    CHECK (first_id <= last_id)
);

-- Room messages and DMs share one sequence of ids. This is its high-water
-- mark: the highest id ever given. Purges never lower it, so ids stay
-- strictly increasing across restarts.
CREATE TABLE message_ids (last_id INTEGER NOT NULL);
INSERT INTO message_ids
    SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0);

INSERT INTO room_batches (last_id, first_id, ts, messages)
    SELECT id, id, ts, json_array(json_array(sender, text))
    FROM messages WHERE recipient IS NULL;
DELETE FROM messages WHERE recipient IS NULL;

-- What is left are the DMs, one to a row: they are read per pair of people and
-- marked as given one by one. Their ids come from message_ids too. (Their
-- indexes keep the names they were given in 0003.) The new name also makes
-- a server of the version before this one, if one still runs on this file,
-- fail its writes loudly rather than store messages where none are read.
ALTER TABLE messages RENAME TO direct_messages;
