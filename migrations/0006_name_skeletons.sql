-- Names that look alike may not both be accounts: `aIice` beside `alice`,
-- `r00t` beside `root` (authchat/usernames.py, `skeleton`). Each account keeps
-- the skeleton of its name, computed here with the same replacements in the
-- same order as the Python function. The store checks it inside the
-- transaction that creates an account, so the check and the write are one
-- step. It is not a UNIQUE index: a database may already hold two accounts
-- that look alike, which this migration must not refuse; they keep their
-- names, and no third one like them can be made.
ALTER TABLE users ADD COLUMN name_skeleton TEXT NOT NULL DEFAULT '';
UPDATE users SET name_skeleton =
    replace(replace(replace(replace(replace(replace(replace(replace(
        lower(username), '_', ''), '.', ''), '-', ''), 'rn', 'm'), 'vv', 'w'),
        '1', 'l'), 'i', 'l'), '0', 'o');
CREATE INDEX users_name_skeleton ON users (name_skeleton);

-- An older server still running on this file would make accounts with no
-- skeleton, past the look-alike check: its writes fail loudly instead.
CREATE TRIGGER users_need_a_name_skeleton BEFORE INSERT ON users
WHEN NEW.name_skeleton = ''
BEGIN
    SELECT RAISE(ABORT, 'users needs a name skeleton: this authchat is older than the database');
END;
