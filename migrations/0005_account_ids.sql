-- Direct messages belong to accounts, not to names. A name passes to whoever
-- registers it after its account is deleted, and with names as the key the
-- new owner was given the old one's waiting DMs and DM history.
--
-- First, account ids that are never reused: without AUTOINCREMENT, SQLite
-- gives a new row the highest id in the table plus one, which is the id of
-- the newest account again if that one was deleted. The table is rebuilt to
-- get it (SQLite cannot add AUTOINCREMENT to a table), keeping every id.
CREATE TABLE users_new (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    username         TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    password_hash    TEXT    NOT NULL,
    role             TEXT    NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    disabled         INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL,
    last_login_at    TEXT,
    password_version INTEGER NOT NULL DEFAULT 0
);
INSERT INTO users_new (id, username, password_hash, role, disabled, created_at, updated_at,
                       last_login_at, password_version)
    SELECT id, username, password_hash, role, disabled, created_at, updated_at,
           last_login_at, password_version
    FROM users;
DROP TABLE users;
ALTER TABLE users_new RENAME TO users;

-- Each DM gets the ids of its two accounts. The names stay, as they were
-- when it was sent, for display and export. A DM older than the account that
-- now has its name was written to or by an earlier holder of that name, whose
-- account is gone: it gets no id, and so belongs to nobody's conversations.
ALTER TABLE direct_messages ADD COLUMN sender_id INTEGER;
ALTER TABLE direct_messages ADD COLUMN recipient_id INTEGER;
UPDATE direct_messages SET
    sender_id = (SELECT id FROM users WHERE users.username = direct_messages.sender
                 AND substr(users.created_at, 1, 19) <= substr(direct_messages.ts, 1, 19)),
    recipient_id = (SELECT id FROM users WHERE users.username = direct_messages.recipient
                    AND substr(users.created_at, 1, 19) <= substr(direct_messages.ts, 1, 19));

-- DMs still waiting for an account that is gone will never be given to anyone.
DELETE FROM direct_messages WHERE delivered = 0 AND recipient_id IS NULL;

DROP INDEX messages_to;
DROP INDEX messages_from;
DROP INDEX messages_waiting;
-- A conversation is read as the two directions of one pair of accounts, each
-- a range of this index; waiting DMs, by their recipient, from the small
-- partial index.
CREATE INDEX direct_messages_pair ON direct_messages (sender_id, recipient_id, id);
CREATE INDEX direct_messages_waiting ON direct_messages (recipient_id, id) WHERE delivered = 0;

-- A server of an older version still running on this file would go on
-- storing DMs without account ids, which nobody would ever be given: its
-- writes fail loudly instead, as README's "To upgrade" says they will.
CREATE TRIGGER direct_messages_need_account_ids BEFORE INSERT ON direct_messages
WHEN NEW.sender_id IS NULL OR NEW.recipient_id IS NULL
BEGIN
    SELECT RAISE(ABORT, 'direct_messages needs account ids: this authchat is older than the database');
END;
