-- The room's messages, stored a commit at a time: one row holds every room
-- message of one group commit (authchat/journal.py). A row a message cost
-- SQLite more than all the rest of a broadcast, a fifth and more of the
-- server's throughput (docs/benchmarks.md, "What storing messages costs");
-- a row a commit shares that cost among all the messages of the commit.
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
-- marked as given one by one. Their ids come from message_ids too.
ALTER TABLE messages RENAME TO direct_messages;
