// Package redisstore keeps idempotency claims and records in Redis, through
// github.com/redis/go-redis/v9, so that every replica of a service that
// shares one Redis sees the same claims.
//
//	client := redis.NewClient(&redis.Options{
//		Addr:                  "localhost:6379",
//		ContextTimeoutEnabled: true,
//	})
//	store := redisstore.New(client)
//	defer store.Close()
//
// # Guarantees
//
// Each decision is one round trip: a Lua script, sent with EVALSHA (and
// once more with EVAL after Redis has lost its script cache, such as after
// a restart), that runs atomically in Redis.
//
//   - [Store.Claim] claims a free key, or answers that it is in flight, with
//     the lease left, or completed, with the record.
//   - [Store.Complete], [Store.Release] and [Store.Renew] act only while the
//     key still holds the caller's live claim: the token and the claim state
//     are both checked, so a late renewal or release never touches a
//     completed record, and a holder whose lease ran out cannot overwrite,
//     delete or extend the next holder's claim. Otherwise they return
//     [idempotency.ErrNotHeld] and change nothing.
//   - Leases and record expiry are Redis's own key TTLs (PX); a record
//     stored with expiry zero has no TTL at all. Time is Redis's clock.
//     Every duration works: one is rounded up to whole milliseconds, so a
//     nanosecond lasts one, and one longer than [MaxTTL], a century, lasts
//     MaxTTL, as Redis refuses a TTL that overflows its clock.
//   - Every script touches exactly one key, the prefix followed by the
//     storage key, so the store works on a Redis Cluster, whose slots the
//     keys spread over unless the prefix has a hash tag.
//   - Records are opaque bytes, stored as they are.
//
// Each key holds one Redis string: a one-byte tag, then the claim's token or
// the record. A string is the cheapest value Redis has, and its TTL serves as
// both the lease and the expiry. A key that holds anything else, written by
// someone else, makes Claim return an error, never a panic and never a
// response.
//
// # Local cache
//
// With [WithLocalCache], a store keeps the completed records it stores or
// finds in a bounded cache of its own, and answers a claim of such a key
// from there, with no round trip: replays of hot keys then cost Redis
// nothing. The claim script reports a completed record's time to live for
// this, and an entry ends no later than its record does in Redis, by
// Redis's clock. What the cache cannot see is a record that leaves Redis
// early (deleted, evicted, lost in a failover): the store replays it until
// its expiry all the same. The cache is off by default.
//
// # Waiting
//
// [Store] implements [idempotency.Waiter]. The first [Store.Wait] starts one
// pub/sub subscription for the store, on the channel "<prefix>wake"
// ("idempotency:wake" for the empty prefix); [Store.Close] ends it. A
// waiter makes sure the subscription is confirmed, then marks the claim in
// one round trip; completing or releasing a marked claim publishes its
// key, and only a marked one, so that completions nobody waits for cost
// nothing extra. A claim whose lease runs out publishes nothing: the waiter
// looks again when the lease left has passed. A waiter also looks again
// after the poll interval of [WithPollInterval], in case a message was lost.
// Classic PUBLISH reaches subscribers on every node of a Cluster. It does not
// cross the shards of a [redis.Ring], where waiting falls back to the lease
// and the poll interval.
//
// # Operators
//
// [Store] implements [idempotency.Inspector], [idempotency.Forgetter] and
// [idempotency.Counter], which cmd/idemctl uses. Inspect reads a key's value
// and TTL in one round trip; Forget deletes the key in one round trip, and
// wakes the waiters of a claim it deletes; Count walks the prefix with SCAN
// (COUNT 1000 per call, on every master of a Cluster) and reads one byte of
// each key, so it never blocks Redis but costs a round trip per thousand
// keys or so.
//
// # Timeouts
//
// go-redis honours context deadlines only when the client's options have
// ContextTimeoutEnabled set; without it a call waits for the client's own
// dial, read and write timeouts, whatever its context says. [New] logs a
// warning when it can see that the option is off. An unreachable Redis
// makes every method return an error, which the engine answers as a store
// failure.
//
// go-redis retries a command whose connection failed (MaxRetries). A claim
// whose answer was lost that way may have been made: its retry, which
// carries the same token, is then answered "claimed" again.
//
// # What Redis can lose
//
// The store is only as durable as the Redis behind it:
//
//   - Replication is asynchronous. Claims and records written just before a
//     failover may be missing on the new primary, so a retry may run the
//     handler again.
//   - Under maxmemory, an eviction policy may drop claims and records. Use
//     noeviction, or a volatile-* policy with room to spare (records with
//     expiry zero have no TTL, so volatile-* never evicts them).
//   - A Redis restarted without persistence has lost everything. With
//     appendonly yes and appendfsync always, it loses nothing it answered.
package redisstore
