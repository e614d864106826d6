-- Session tokens: a client that logged in with its password may come back
-- with a token instead, without a bcrypt (a restart's reconnect storm, a
-- client that remembers its login). A token is a credential: only its
-- SHA-256 is kept, so a copy of the database resumes no one.
--
-- A token is bound to its account and to the password it was issued under:
-- a change of password, a disable and a delete end every token of the
-- account in the same transaction; so does `users sessions revoke`, and a
-- client's logout ends its own.
CREATE TABLE session_tokens (
    id               INTEGER PRIMARY KEY,
    token_hash       TEXT    NOT NULL UNIQUE,
    account_id       INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    password_version INTEGER NOT NULL,
    created_at       TEXT    NOT NULL,
    expires_at       TEXT    NOT NULL
);
CREATE INDEX session_tokens_by_account ON session_tokens (account_id);
