-- A store file left by schema version 4 (before replies' provenance), made by that code
-- (ws_handlers/adapters/sqlite.py at b14e003) and dumped with sqlite3's iterdump: a chat
-- with its opening, a participant's message and a reply. tests/ws_handlers/adapters/test_sqlite.py
-- loads it and sets PRAGMA user_version = 4.
BEGIN TRANSACTION;
CREATE TABLE allowlist (
        experiment TEXT NOT NULL, participant TEXT NOT NULL,
        PRIMARY KEY (experiment, participant)) WITHOUT ROWID;
CREATE TABLE allowlists (experiment TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE assignments (
        study TEXT NOT NULL, participant TEXT NOT NULL, arm TEXT NOT NULL, place INTEGER NOT NULL,
        entered_at REAL NOT NULL, platform_ids TEXT NOT NULL,
        PRIMARY KEY (study, participant)) WITHOUT ROWID;
CREATE TABLE chats (
        chat_id TEXT PRIMARY KEY,
        experiment TEXT NOT NULL, session TEXT NOT NULL, participant TEXT NOT NULL, chat_key TEXT NOT NULL,
        bot TEXT NOT NULL, bot_name TEXT NOT NULL, created_at REAL NOT NULL,
        next_seq INTEGER NOT NULL, user_messages INTEGER NOT NULL, tokens_used INTEGER NOT NULL,
        connection_id TEXT, lease_turn TEXT, lease_until REAL, lease_seq INTEGER,
        lease_claimed INTEGER NOT NULL DEFAULT 0);
INSERT INTO "chats" VALUES('c_5c527ce0d1a9193eb8284696e87bb3d8','exp1','s1','P1','main','{"name": "tutor", "model": "gpt-4o-mini", "system_prompt": "You are Ada.", "temperature": 0.7, "max_tokens": 400, "opening_message": null, "limits": {"max_chars": 1000, "max_user_messages": 30, "max_tokens_per_chat": 50000}, "pace": null}','tutor',1800000000.0,4,1,19,'c1',NULL,NULL,NULL,0);
CREATE TABLE client_messages (
        chat_id TEXT NOT NULL, client_msg_id TEXT NOT NULL, seq INTEGER NOT NULL,
        PRIMARY KEY (chat_id, client_msg_id)) WITHOUT ROWID;
INSERT INTO "client_messages" VALUES('c_5c527ce0d1a9193eb8284696e87bb3d8','m1',2);
CREATE TABLE connections (
        connection_id TEXT PRIMARY KEY,
        participant TEXT NOT NULL, experiment TEXT NOT NULL, session TEXT NOT NULL,
        connected_at REAL NOT NULL, expires_at INTEGER NOT NULL,
        rate_window INTEGER NOT NULL DEFAULT 0, rate_count INTEGER NOT NULL DEFAULT 0);
CREATE TABLE controls (
        experiment TEXT PRIMARY KEY, paused INTEGER, token_budget INTEGER,
        tokens_used INTEGER NOT NULL DEFAULT 0);
CREATE TABLE llm_breaker (
        id INTEGER PRIMARY KEY CHECK (id = 1), failures INTEGER NOT NULL, window_start REAL NOT NULL,
        open_until REAL NOT NULL DEFAULT 0);
CREATE TABLE messages (
        chat_id TEXT NOT NULL, seq INTEGER NOT NULL, role TEXT NOT NULL, text TEXT NOT NULL,
        created_at REAL NOT NULL, client_msg_id TEXT,
        prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, model TEXT, latency_ms INTEGER,
        experiment TEXT NOT NULL, session TEXT NOT NULL, participant TEXT NOT NULL, chat_key TEXT NOT NULL,
        bot_name TEXT NOT NULL,
        PRIMARY KEY (chat_id, seq));
INSERT INTO "messages" VALUES('c_5c527ce0d1a9193eb8284696e87bb3d8',1,'assistant','Hello.',1800000000.0,NULL,0,0,NULL,NULL,'exp1','s1','P1','main','tutor');
INSERT INTO "messages" VALUES('c_5c527ce0d1a9193eb8284696e87bb3d8',2,'user','What is a prime?',1800000001.0,'m1',0,0,NULL,NULL,'exp1','s1','P1','main','tutor');
INSERT INTO "messages" VALUES('c_5c527ce0d1a9193eb8284696e87bb3d8',3,'assistant','A number with two divisors.',1800000002.0,NULL,12,7,'gpt-4o-mini',850,'exp1','s1','P1','main','tutor');
CREATE TABLE participants (
        experiment TEXT NOT NULL, session TEXT NOT NULL, participant TEXT NOT NULL, chats INTEGER NOT NULL,
        PRIMARY KEY (experiment, session, participant)) WITHOUT ROWID;
INSERT INTO "participants" VALUES('exp1','s1','P1',1);
CREATE TABLE studies (
        study TEXT PRIMARY KEY, definition TEXT NOT NULL, seed BLOB NOT NULL, key_sha256 TEXT NOT NULL,
        entries INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE INDEX chats_by_experiment ON chats (experiment, session, participant, chat_key);
COMMIT;
