-- Counts password changes, so that a change made anywhere (the protocol or
-- the admin CLI) can end the account's other live sessions. A rehash at a
-- new bcrypt cost is not a change and leaves it alone.
ALTER TABLE users ADD COLUMN password_version INTEGER NOT NULL DEFAULT 0;
