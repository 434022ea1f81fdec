// Package pgstore keeps idempotency claims and records in a PostgreSQL
// table, through github.com/jackc/pgx/v5, and lets a handler commit its own
// writes to that database in the same transaction as its stored response.
//
//	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
//	...
//	if err := pgstore.Migrate(ctx, pool); err != nil { ... }
//	store := pgstore.New(pool)
//	defer store.Close() // before pool.Close(): the store does not own the pool
//	handler := httpmw.New(store)(mux)
//
// # Guarantees
//
// Each decision is one statement, one round trip, on the database's clock
// (clock_timestamp(), the time when the statement reads it; never the
// application's clock, never the transaction's start):
//
//   - [Store.Claim] reads the key and, when it holds nothing live (or the
//     same token's claim again), takes it with an INSERT ... ON CONFLICT DO
//     UPDATE, in one statement. It answers claimed, in flight with the lease
//     left, or completed with the record. A replay or a duplicate in flight
//     writes nothing: no row lock, no commit to disk. When a concurrent claim
//     of the same key commits while the statement runs, the statement cannot
//     see it, and it is sent again (a second round trip, only under such a
//     race).
//   - [Store.Complete], [Store.Release] and [Store.Renew] are one UPDATE or
//     DELETE each, that acts only on the token's live claim: the token, the
//     claim state (a record has no token) and the lease are all checked,
//     so a late holder can neither overwrite, delete nor extend the next
//     holder's claim, nor touch a completed record. Otherwise they return
//     [idempotency.ErrNotHeld] and change nothing.
//   - A claim or record whose time has passed counts as absent at once; the
//     rows are deleted later, in bounded batches, by [Store.Sweep], which
//     the store runs in the background (see [WithSweepInterval]). No
//     statement locks more than the rows it touches.
//   - Durations are whole microseconds, rounded up; anything beyond a
//     hundred years (math.MaxInt64 included) is a hundred years. An expiry
//     of zero is stored as "never" (a NULL).
//
// The table holds one row per storage key; [Schema] shows it, and
// [Migrate] creates it.
//
// # Transactions
//
// A handler behind any adapter of the library calls [Tx] with its request's
// context to get the transaction in which its response will be stored, and
// does its writes to this database in it. After the handler returns, the
// library writes the record in that transaction (a compare-and-set on the
// token and the live lease, by clock_timestamp()) and commits, before the
// client gets its answer. So, while the record lives:
//
//   - the handler's writes in the transaction commit at most once per key,
//     and exactly when its response is stored: a process that dies before
//     the commit leaves nothing behind, and the retry runs on clean data;
//     one that dies after the commit leaves the record, which the retry
//     replays;
//   - a holder whose lease ran out (and whose key another request may be
//     running) cannot commit: its transaction rolls back, and its client
//     gets 503 / CodeUnavailable, "retry with the same key";
//   - a response the library does not store (a panic, a response the
//     store policy rejects, an answer httpmw does not store such as HTML,
//     a request whose context ended) rolls the transaction back and
//     releases the claim; the client still gets that response.
//
// What stays outside: side effects outside this database (an e-mail, a
// call to a payment provider, a write to another database) are not in the
// transaction, and are protected only as with any other store. See [Tx]
// for what the handler may do with the transaction.
//
// A handler that never calls [Tx] sees an ordinary store: no transaction is
// begun, and its response is stored with [Store.Complete].
//
// Each request whose handler called [Tx] holds one connection of the pool
// from then until the commit, and lease renewals take connections too:
// size the pool for the requests that run at once, plus a few.
//
// # Waiting
//
// [Store] implements [idempotency.Waiter] with LISTEN/NOTIFY. A waiting
// duplicate marks the claim it waits for, in one statement that also reads
// the lease left; completing or releasing a marked claim notifies its key on
// the table's channel, in the same statement as the compare-and-set (so a
// completion nobody waits for notifies nothing, and one in a handler's
// transaction notifies when it commits). One connection per store, opened
// outside the pool on the first Wait and closed by [Store.Close], listens
// and wakes the waiters. A waiter also looks again when the lease it read
// runs out, and after [WithPollInterval] in case a notification was lost.
package pgstore
