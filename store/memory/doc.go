// Package memory is an in-process [idempotency.Store]: the default for a
// single instance, for tests, and for development.
//
// A [Store] keeps claims and completed records in the memory of one
// process, so it protects requests that reach that process only. Several
// replicas of a service need a shared store, such as the one in
// store/redisstore.
//
// What it guarantees:
//
//   - Every method is atomic with respect to the others and safe for
//     concurrent use: of any number of concurrent claims on one key, exactly
//     one succeeds.
//   - Leases and record expiries run on the store's own monotonic clock, so
//     changes of the wall clock do not shorten or lengthen them.
//   - It is bounded: it holds at most [WithMaxRecords] claims and records
//     together. When it is full, a new claim makes it drop the entries whose
//     lease or expiry has passed; only when none is left does the claim fail
//     with an error wrapping [ErrFull], which the engine answers as a store
//     failure. However many claims race for the room, none is refused while
//     an expired entry could make room for it. It never evicts a live claim
//     or an unexpired record to make room.
//   - It implements [idempotency.Waiter]: a duplicate request waits on a
//     channel, without polling, and is woken when the claim is completed or
//     released or when its lease runs out.
//   - It implements [idempotency.Inspector], [idempotency.Forgetter] and
//     [idempotency.Counter], for tools that show or free a key.
//
// What it does not do: it keeps nothing across restarts, and it shares
// nothing between processes.
//
// The records cost the garbage collector next to nothing, however many
// there are. The store spreads keys over 64 shards; each keeps its keys and
// records side by side in byte slices of up to 64 KiB, and finds them
// through an index and an array of fixed-size slots, none of which holds a
// pointer. A collection thus marks one object per 64 KiB of records, where
// it would otherwise visit every key and every record on every cycle. A
// shard that grows adds a slice and copies nothing. Bytes once written
// there are never modified, which is what lets [Store.Claim] return a
// record without copying it; the space of deleted entries is reclaimed by
// copying the live ones into new slices once it outweighs them.
//
// Expired entries are reclaimed lazily, by the calls that meet them and by
// a sweep of one shard that new claims trigger now and then, so the store
// starts no goroutine. [Store.Close] exists so that the store can be
// handled like the others; calling it is harmless and optional.
package memory
